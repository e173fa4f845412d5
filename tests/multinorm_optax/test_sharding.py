"""The transforms under jit on a (fsdp=4, tensor=2) mesh of 8 simulated CPU devices."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import multinorm_optax as mo

AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}


def _mesh(kind):
  return jax.make_mesh(
    (4, 2), ("fsdp", "tensor"), axis_types=(AXIS_TYPES[kind],) * 2
  )


def _grads(mesh):
  rng = np.random.default_rng(0)
  host = {
    "up": rng.standard_normal((64, 32)).astype(np.float32),  # (in, out)
    "stacked": rng.standard_normal((2, 64, 32)).astype(
      np.float32
    ),  # (layers, in, out)
  }
  specs = {"up": P("fsdp", "tensor"), "stacked": P(None, "fsdp", "tensor")}
  sharded = {
    k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()
  }
  return host, sharded, specs


def _all_gather_sizes(hlo: str):
  """Element counts of the outputs of every all-gather in optimized HLO text."""
  sizes = []
  for line in hlo.splitlines():
    if re.search(r"\ball-gather(-start)?\(", line):
      for dims in re.findall(
        r"\[([\d,]*)\]", line.split("=", 1)[1].split("all-gather")[0]
      ):
        sizes.append(
          int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
        )
  return sizes


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_sinkgd_keeps_sharding_matches_unsharded_and_only_reduces_vectors(
  kind, impl
):
  mesh = _mesh(kind)
  host, sharded, specs = _grads(mesh)
  tx = mo.scale_by_sinkgd(5, impl=impl)
  update = jax.jit(lambda g: tx.update(g, tx.init(g))[0])
  with jax.set_mesh(mesh):
    out = update(sharded)
    hlo = update.lower(sharded).compile().as_text()
  for k in host:
    assert out[k].sharding.spec == specs[k], (k, out[k].sharding)
  chex.assert_trees_all_close(
    out, jax.jit(lambda g: tx.update(g, None)[0])(host), rtol=1e-5, atol=1e-6
  )
  # Only row/column norm vectors cross devices: all-reduces, never a gathered matrix.
  assert "all-reduce" in hlo
  local_shard = 64 * 32 // 8
  assert all(size < local_shard for size in _all_gather_sizes(hlo)), (
    _all_gather_sizes(hlo)
  )


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_sinkgd_long_row_leaf_sums_row_by_row_without_gathering(kind):
  """A (fan_in, fan_out >= LONG_ROW) leaf, the LM head's orientation, takes
  the row-by-row sum on CPU: its loop walks each device's own rows, so only
  vectors cross devices, and the result is the unsharded one."""
  mesh = _mesh(kind)
  from multinorm_optax import sinkhorn

  shape, spec = (64, sinkhorn.LONG_ROW), P("fsdp", "tensor")
  host = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
  sharded = jax.device_put(host, NamedSharding(mesh, spec))
  tx = mo.scale_by_sinkgd(2, warm_start=True, overflow_guard="on_demand")
  update = jax.jit(lambda g: tx.update({"k": g}, tx.init({"k": g}))[0]["k"])
  with jax.set_mesh(mesh):
    out = update(sharded)
    hlo = update.lower(sharded).compile().as_text()
  assert "while" in hlo.lower()
  assert out.sharding.spec == spec
  np.testing.assert_allclose(out, update(host), rtol=1e-5, atol=1e-6)
  vector = shape[1] * 16  # the row blocks' partial sums, at most
  assert all(size <= vector for _, size in _collectives(hlo)), _collectives(hlo)


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_swan_whitening_runs_on_sharded_matrices_and_keeps_sharding(kind):
  mesh = _mesh(kind)
  host, sharded, specs = _grads(mesh)
  tx = mo.scale_by_swan()
  with jax.set_mesh(mesh):
    out = jax.jit(lambda g: tx.update(g, None)[0])(sharded)
  chex.assert_trees_all_close(
    out, jax.jit(lambda g: tx.update(g, None)[0])(host), rtol=1e-4, atol=1e-4
  )
  if kind == "explicit":  # the type carries the sharding, and whiten pins it
    for k in host:
      assert out[k].sharding.spec == specs[k], (k, out[k].sharding)
  else:  # under Auto axes the caller's jit decides, e.g. by out_shardings
    shardings = {k: NamedSharding(mesh, specs[k]) for k in specs}
    with jax.set_mesh(mesh):
      out = jax.jit(lambda g: tx.update(g, None)[0], out_shardings=shardings)(
        sharded
      )
    for k in host:
      assert out[k].sharding.spec == specs[k], (k, out[k].sharding)


def test_sinkgd_optimizer_step_on_explicit_mesh_keeps_param_sharding():
  mesh = _mesh("explicit")
  host, sharded, specs = _grads(mesh)
  params = jax.tree.map(lambda x: x * 0.5, sharded)
  tx = mo.sinkgd(1e-2)

  @jax.jit
  def step(params, grads, state):
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(jnp.add, params, updates), state

  with jax.set_mesh(mesh):
    new_params, _ = step(params, sharded, tx.init(params))
  for k in host:
    assert new_params[k].sharding.spec == specs[k]


def _update_leaf(tx, leaf, g):
  return tx.update({leaf: g}, None)[0][leaf]


def _collectives(hlo: str):
  """(opcode, output elements) of every all-gather/all-reduce/etc. in optimized HLO."""
  found = []
  for line in hlo.splitlines():
    m = re.search(
      r"= (\w+)\[([\d,]*)\][^ ]* (all-gather|all-reduce|reduce-scatter|"
      r"all-to-all|collective-permute)(-start)?\(",
      line,
    )
    if m:
      dims = [int(d) for d in m.group(2).split(",") if d]
      found.append((m.group(3), int(np.prod(dims or [1]))))
  return sorted(found)


@pytest.mark.parametrize("mode", ["fast", "exact", "newton_schulz"])
@pytest.mark.parametrize("leaf", ["up", "stacked"])
@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_swan_moves_only_gram_sized_data_a_fixed_number_of_times(
  kind, leaf, mode
):
  mesh = _mesh(kind)
  host, sharded, specs = _grads(mesh)
  collectives = {}
  for steps in (2, 7):
    tx = mo.scale_by_swan(whiten_mode=mode, ns_steps=steps)
    update = jax.jit(functools.partial(_update_leaf, tx, leaf))
    with jax.set_mesh(mesh):  # no out_shardings: the output keeps its own
      out = update(sharded[leaf])
      collectives[steps] = _collectives(
        update.lower(sharded[leaf]).compile().as_text()
      )
    assert out.sharding.spec == specs[leaf], (kind, out.sharding)
    np.testing.assert_allclose(
      out, tx.update({leaf: host[leaf]}, None)[0][leaf], rtol=1e-4, atol=1e-4
    )
  # Independent of the step count: nothing happens per Newton-Schulz step.
  assert collectives[2] == collectives[7], collectives
  layers = host[leaf].size // (64 * 32)
  k = 32  # the short side: canonical (m, n) = (fan_out, fan_in) = (32, 64)
  gathers = [n for op, n in collectives[2] if op == "all-gather"]
  reduces = [n for op, n in collectives[2] if op == "all-reduce"]
  assert {op for op, _ in collectives[2]} <= {"all-gather", "all-reduce"}
  # The short side made whole over 'tensor' only: the rows of this device's
  # fsdp slice, a quarter of the matrix (once; under vmap, for stacked layers,
  # XLA gathers it again for the final product).
  assert 1 <= len(gathers) <= layers and set(gathers) == {layers * k * 16}
  # One Gram-sized all-reduce; the rest are row statistics and scalars.
  assert sorted(reduces)[-1] == layers * k * k
  assert all(n <= layers * k for n in sorted(reduces)[:-1]), reduces
  assert len(reduces) <= 7, reduces
