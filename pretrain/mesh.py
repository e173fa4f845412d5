"""The device mesh: parse `--mesh`, build it, and check that the shapes fit it.

Mesh axes are always ('data', 'fsdp', 'tensor'):

- data:   pure data parallelism (parameters replicated across it);
- fsdp:   data parallelism with parameters and optimizer state sharded across it;
- tensor: tensor (model) parallelism inside a layer.

The batch is split over ('data', 'fsdp'); each parameter's split is declared by the
model (`models.llama.param_partition_specs`), and a dimension that its mesh axes
do not divide is replicated (`models.llama.fit_spec`, the one rule). All axes are `Auto`: the model relies on
GSPMD to propagate shardings through the activations.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def parse_mesh(spec: str | None, num_devices: int) -> dict[str, int]:
  """Parses 'data=2,fsdp=4,tensor=1' into axis sizes whose product is `num_devices`.

  Axes left out are 1, except `fsdp`, which (when left out) takes whatever devices the
  other axes leave: `tensor=2` on 8 devices is data=1, fsdp=4, tensor=2. `None` or ''
  puts every device on fsdp.
  """
  sizes: dict[str, int] = {}
  for part in (spec or "").replace(" ", "").split(","):
    if not part:
      continue
    name, sep, value = part.partition("=")
    if not sep or name not in AXES:
      raise ValueError(
        f"bad --mesh entry {part!r}: expected axis=size with axis one of {', '.join(AXES)}"
      )
    if name in sizes:
      raise ValueError(f"bad --mesh: axis {name!r} given twice")
    try:
      sizes[name] = int(value)
    except ValueError:
      raise ValueError(
        f"bad --mesh entry {part!r}: size must be an integer"
      ) from None
    if sizes[name] < 1:
      raise ValueError(f"bad --mesh entry {part!r}: size must be >= 1")
  if "fsdp" not in sizes:
    rest = math.prod(sizes.get(a, 1) for a in AXES if a != "fsdp")
    if num_devices % rest:
      raise ValueError(
        f"bad --mesh {spec!r}: {rest} devices on data x tensor do not divide "
        f"the {num_devices} devices"
      )
    sizes["fsdp"] = num_devices // rest
  shape = {a: sizes.get(a, 1) for a in AXES}
  if math.prod(shape.values()) != num_devices:
    raise ValueError(
      f"bad --mesh {format_mesh(shape)}: it holds {math.prod(shape.values())} devices "
      f"but {num_devices} are in use"
    )
  return shape


def format_mesh(shape: dict[str, int]) -> str:
  return ",".join(f"{a}={shape[a]}" for a in AXES)


def make_mesh(shape: dict[str, int], devices=None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axis types over `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    tuple(shape[a] for a in AXES),
    AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
    devices=devices,
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[batch, seq] arrays: rows split over (data, fsdp), replicated over tensor."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_fits(
  mesh: Mesh, batch_size: int, process_count: int = 1, grad_accum: int = 1
) -> None:
  """The global batch must split evenly over (data, fsdp) and over the
  processes, and into `grad_accum` microbatches that split over (data, fsdp)."""
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % ways:
    raise ValueError(
      f"--batch-size {batch_size} does not divide over data x fsdp = {ways} devices; "
      f"use a multiple of {ways}"
    )
  if batch_size % process_count:
    raise ValueError(
      f"--batch-size {batch_size} does not divide over {process_count} processes"
    )
  if batch_size % (grad_accum * ways):
    raise ValueError(
      f"--batch-size {batch_size} does not split into --grad-accum "
      f"{grad_accum} microbatches over data x fsdp = {ways} devices; use a "
      f"multiple of {grad_accum} x {ways} = {grad_accum * ways}"
    )


def global_batch(
  mesh: Mesh, local_rows: np.ndarray, global_rows: int
) -> jax.Array:
  """Assembles a global [global_rows, ...] batch on the mesh from this process's rows."""
  sharding = batch_sharding(mesh)
  return jax.make_array_from_process_local_data(
    sharding, local_rows, (global_rows,) + tuple(local_rows.shape[1:])
  )


def map_like_params(fn, tree, params, default, *, reduced: bool = False):
  """``fn(param)`` for each leaf of ``tree`` that copies a parameter, else ``default``.

  A leaf copies a parameter when its tree path ends with that parameter's path
  and it has that parameter's shape, as Adam's moments and momenta do (their
  paths are the parameters' paths under a prefix such as ``0/mu``); step
  counts and factored statistics do not. The longest matching path wins.

  With ``reduced``, a leaf whose shape is its parameter's with some axes
  reduced to 1 (a per-row or per-column statistic kept as optimizer state,
  such as SinkGD's warm-start column scaling) matches too, and ``fn`` is
  called as ``fn(param, leaf)``.
  """

  def key(k):
    return getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))

  by_path = {
    tuple(map(key, path)): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }
  lengths = sorted({len(p) for p in by_path}, reverse=True)

  def fits(shape, param_shape) -> bool:
    if shape == param_shape:
      return True
    return (
      reduced
      and len(shape) == len(param_shape)
      and all(d in (1, p) for d, p in zip(shape, param_shape))
    )

  def one(path, leaf):
    path = tuple(map(key, path))
    for n in lengths:
      param = by_path.get(path[-n:]) if len(path) >= n else None
      if param is not None and fits(tuple(leaf.shape), tuple(param.shape)):
        return fn(param, leaf) if reduced else fn(param)
    return default

  return jax.tree_util.tree_map_with_path(one, tree)


def shardings_like_params(tree, params, default: NamedSharding):
  """Shardings for a tree that holds copies of the params (e.g. optimizer state).

  A leaf that copies a parameter (see :func:`map_like_params`) is sharded like
  that parameter, so optimizer state is split exactly as the model is; a leaf
  with some of the parameter's axes reduced to 1 is split like it along the
  other axes. Every other leaf (step counts, factored statistics) gets
  `default`.
  """

  def like(param, leaf):
    sharding = param.sharding
    if tuple(leaf.shape) == tuple(param.shape):
      return sharding
    spec = tuple(sharding.spec) + (None,) * (
      len(param.shape) - len(sharding.spec)
    )
    return NamedSharding(
      sharding.mesh,
      P(
        *(
          s if d == p else None
          for s, d, p in zip(spec, leaf.shape, param.shape)
        )
      ),
    )

  return map_like_params(like, tree, params, default, reduced=True)
