"""Running whole-matrix math (matrix products) on arrays sharded over Explicit axes."""

from __future__ import annotations

from collections.abc import Callable

import jax


def explicit_sharding(x: jax.Array):
  """The NamedSharding of ``x`` if any of its mesh axes are Explicit, else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or not getattr(mesh, "explicit_axes", ()):
    return None
  return sharding


def on_auto_axes(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array
) -> jax.Array:
  """``fn(x)``, run with Auto axes when ``x`` lives on an Explicit mesh.

  Under Explicit axes a product that contracts a sharded dimension is a type
  error until its output sharding is spelled out; for whitening the best
  collectives depend on the shapes, so we let GSPMD choose them and only pin
  the result to the input's sharding.
  """
  sharding = explicit_sharding(x)
  if sharding is None:
    return fn(x)
  return jax.sharding.auto_axes(fn, out_sharding=sharding)(x)


def on_every_device(fn: Callable[..., jax.Array], *args) -> jax.Array:
  """``fn(*args)`` computed whole on every device of the current mesh.

  For the iteration on a small matrix (a Gram matrix): its input is made
  replicated once (one collective, of its own size), then every device runs
  ``fn`` on the full matrix with no collective, whatever the step count.
  Left to itself, GSPMD shards the products of such an iteration and
  communicates at every step. Without a mesh this is ``fn(*args)``.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn(*args)
  replicated = jax.sharding.PartitionSpec()
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=(replicated,) * len(args),
    out_specs=replicated,
  )(*args)


def unsharded_along(x: jax.Array, axis: int) -> jax.Array:
  """``x`` with ``axis`` gathered whole on every device (other axes: GSPMD's choice)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = [jax.sharding.PartitionSpec.UNCONSTRAINED] * x.ndim
  spec[axis] = None
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))
