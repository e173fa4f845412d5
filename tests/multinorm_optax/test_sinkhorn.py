"""The fused SR-Sinkhorn's options: a warm-started column scaling kept as
state, and the on-demand overflow guard (no separate max|G| read)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import multinorm_optax as mo
from multinorm_optax import sinkhorn
from tests import reference

F32_MAX = float(np.finfo(np.float32).max)


def _rand(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _steps(tx, grads_seq, state=None):
  """(updates of each step, final state) of `tx` over a list of gradient trees."""
  state = tx.init(grads_seq[0]) if state is None else state
  update = jax.jit(tx.update)
  outs = []
  for g in grads_seq:
    u, state = update(g, state)
    outs.append(u)
  return outs, state


def _residual(u):
  """fixed_point_residual of a Flax (fan_in, fan_out) update, in the paper's view."""
  return float(mo.fixed_point_residual([mo.row_l2, mo.col_l2], u.T))


# ------------------------------------------------------------------ warm start


@pytest.mark.parametrize("num_iters", [1, 3])
@pytest.mark.parametrize("guard", sinkhorn.OVERFLOW_GUARDS)
def test_warm_start_first_step_equals_the_cold_start(num_iters, guard):
  g = {
    "up": jnp.asarray(_rand((24, 16), 0)),
    "stacked": jnp.asarray(_rand((3, 16, 8), 1)),
  }
  warm = mo.scale_by_sinkgd(num_iters, warm_start=True, overflow_guard=guard)
  cold = mo.scale_by_sinkgd(num_iters, overflow_guard=guard)
  (u,), _ = _steps(warm, [g])
  (expected,), _ = _steps(cold, [g])
  for k in g:
    np.testing.assert_array_equal(u[k], expected[k])


def test_warm_state_is_n_floats_per_matrix_and_ones_at_init():
  params = {
    "up": jnp.zeros((24, 16)),  # (fan_in, fan_out): n = 24
    "stacked": jnp.zeros((3, 16, 8)),  # 3 matrices with n = 16
    "attn_out": jnp.zeros((4, 6, 32)),  # (heads, head_dim) -> d: n = 24
  }
  dn = {
    "up": mo.DimensionNumbers(0, 1),
    "stacked": mo.DimensionNumbers(1, 2),
    "attn_out": mo.DimensionNumbers((0, 1), 2),
  }
  state = mo.scale_by_sinkgd(1, warm_start=True, dimension_numbers=dn).init(
    params
  )
  assert isinstance(state, mo.ScaleBySinkGDState)
  shapes = jax.tree.map(lambda c: c.shape, state.col_scale)
  assert shapes == {"up": (24, 1), "stacked": (3, 16, 1), "attn_out": (4, 6, 1)}
  for c in jax.tree.leaves(state.col_scale):
    assert c.dtype == jnp.float32 and bool((c == 1).all())


def test_warm_l1_on_one_gradient_converges_to_the_cold_fixed_point():
  """Repeating warm L=1 on the same gradient is L=k cold after k steps: the
  residual falls monotonically to float32 noise, onto the cold L=large
  update."""
  g = {"k": jnp.asarray(_rand((40, 24), 2))}
  warm = mo.scale_by_sinkgd(1, warm_start=True)
  outs, _ = _steps(warm, [g] * 60)
  residuals = [_residual(u["k"]) for u in outs]
  converged = [r for r in residuals if r > 1e-6]
  assert all(b < a for a, b in zip(converged, converged[1:])), residuals
  assert residuals[0] > 1e-2 and residuals[-1] < 1e-5
  (cold,), _ = _steps(mo.scale_by_sinkgd(200), [g])
  np.testing.assert_allclose(outs[-1]["k"], cold["k"], atol=2e-5)
  # Warm L=1 after k steps is cold L=k (same iterates, up to the stored
  # vector's exact power-of-two rescaling).
  (cold5,), _ = _steps(mo.scale_by_sinkgd(5), [g])
  np.testing.assert_allclose(outs[4]["k"], cold5["k"], rtol=1e-5, atol=1e-6)
  expected = reference.sr_sinkhorn(np.asarray(g["k"], np.float64).T, 5).T
  np.testing.assert_allclose(outs[4]["k"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("guard", sinkhorn.OVERFLOW_GUARDS)
@pytest.mark.parametrize(
  "scale", [1e-30, 1e-10, 2.0**100, 1e10, 1e30], ids=lambda s: f"{s:g}"
)
def test_warm_state_does_not_depend_on_the_gradient_scale(scale, guard):
  """A step whose gradient is 1e30 (or 1e-30) times the last one's gives the
  same update and the same state as at scale 1; the state is stored with its
  largest entry in [1/2, 1)."""
  g1 = {"k": jnp.asarray(_rand((24, 16), 3))}
  g2 = _rand((24, 16), 4)
  tx = mo.scale_by_sinkgd(2, warm_start=True, overflow_guard=guard)
  (_, base), base_state = _steps(tx, [g1, {"k": jnp.asarray(g2)}])
  scaled_g2 = {"k": jnp.asarray(g2 * np.float32(scale))}
  (_, scaled), scaled_state = _steps(tx, [g1, scaled_g2])
  assert bool(jnp.isfinite(scaled["k"]).all())
  np.testing.assert_allclose(scaled["k"], base["k"], rtol=1e-5, atol=1e-6)
  c, c_base = scaled_state.col_scale["k"], base_state.col_scale["k"]
  np.testing.assert_allclose(c, c_base, rtol=1e-5)
  assert 0.5 <= float(c.max()) < 1.0
  # Scaling the gradient by 10^30 before the first step changes nothing either.
  (first,), state = _steps(tx, [scaled_g2])
  (first_base,), state_base = _steps(tx, [{"k": jnp.asarray(g2)}])
  np.testing.assert_allclose(first["k"], first_base["k"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    state.col_scale["k"], state_base.col_scale["k"], rtol=1e-5
  )


def test_warm_start_keeps_zero_rows_and_columns_zero_and_restarts_them_at_one():
  g = _rand((20, 12), 5)  # (fan_in, fan_out): column j of the paper is row j
  g[3, :] = 0.0  # a zero fan_in index: a zero column of the paper's G
  g[:, 5] = 0.0  # a zero fan_out index: a zero row
  tx = mo.scale_by_sinkgd(1, warm_start=True)
  outs, state = _steps(tx, [{"k": jnp.asarray(g)}] * 3)
  for u in outs:
    out = np.asarray(u["k"])
    assert np.isfinite(out).all()
    assert (out[3, :] == 0).all() and (out[:, 5] == 0).all()
  c = np.asarray(state.col_scale["k"])[:, 0]
  assert c[3] == 1.0 and (c > 0).all()
  # The column comes back once the gradient has it again.
  full = {"k": jnp.asarray(_rand((20, 12), 6))}
  (u,), _ = _steps(tx, [full], state)
  assert (np.abs(np.asarray(u["k"])[3]) > 0).all()
  # An all-zero gradient gives a zero update and leaves a usable state.
  zero = {"k": jnp.zeros((20, 12))}
  (u,), state = _steps(tx, [zero], state)
  assert (np.asarray(u["k"]) == 0).all()
  assert (np.asarray(state.col_scale["k"]) > 0).all()


@pytest.mark.parametrize("guard", sinkhorn.OVERFLOW_GUARDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_gives_nan_and_leaves_the_warm_state_as_it_was(
  bad, guard
):
  g1, g3 = ({"k": jnp.asarray(_rand((16, 12), s))} for s in (7, 8))
  poisoned = {"k": g1["k"].at[2, 3].set(bad)}
  tx = mo.scale_by_sinkgd(1, warm_start=True, overflow_guard=guard)
  _, after_g1 = _steps(tx, [g1])
  (u,), after_bad = _steps(tx, [poisoned], after_g1)
  assert bool(jnp.isnan(u["k"]).all())
  np.testing.assert_array_equal(
    after_bad.col_scale["k"], after_g1.col_scale["k"]
  )
  # The next finite step is the step that would have come without the bad one.
  (u3,), _ = _steps(tx, [g3], after_bad)
  (expected,), _ = _steps(tx, [g3], after_g1)
  np.testing.assert_array_equal(u3["k"], expected["k"])
  # optax.apply_if_finite skips the NaN step and its state too.
  safe = optax.apply_if_finite(tx, max_consecutive_errors=5)
  outs, state = _steps(safe, [g1, poisoned, g3])
  np.testing.assert_array_equal(outs[2]["k"], expected["k"])


def test_warm_start_on_stacked_layers_is_the_per_layer_warm_start():
  seq = [_rand((3, 16, 8), s) for s in (9, 10, 11)]
  tx = mo.scale_by_sinkgd(1, warm_start=True)
  stacked, state = _steps(tx, [{"k": jnp.asarray(g)} for g in seq])
  assert state.col_scale["k"].shape == (3, 16, 1)
  for layer in range(3):
    per_layer, _ = _steps(tx, [{"k": jnp.asarray(g[layer])} for g in seq])
    for a, b in zip(stacked, per_layer):
      np.testing.assert_allclose(a["k"][layer], b["k"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("guard", sinkhorn.OVERFLOW_GUARDS)
def test_warm_start_under_inject_hyperparams_with_traced_num_iters(guard):
  seq = [{"k": jnp.asarray(_rand((16, 12), s))} for s in (12, 13, 14)]
  make = lambda n: mo.scale_by_sinkgd(n, warm_start=True, overflow_guard=guard)
  injected = optax.inject_hyperparams(make)(2)
  traced, _ = _steps(injected, seq)
  static, _ = _steps(make(2), seq)
  for a, b in zip(traced, static):
    np.testing.assert_allclose(a["k"], b["k"], rtol=1e-6, atol=1e-7)
  # A traced count of 0 gives NaN and keeps the state.
  state = injected.init(seq[0])
  _, state = jax.jit(injected.update)(seq[0], state)
  kept = state.inner_state.col_scale["k"]
  state.hyperparams["n"] = jnp.asarray(0)
  u, state = jax.jit(injected.update)(seq[1], state)
  assert bool(jnp.isnan(u["k"]).all())
  np.testing.assert_array_equal(state.inner_state.col_scale["k"], kept)


def test_warm_start_or_on_demand_guard_with_reference_impl_is_an_error():
  for kwargs in (dict(warm_start=True), dict(overflow_guard="on_demand")):
    with pytest.raises(ValueError, match="need impl='fused'"):
      mo.scale_by_sinkgd(5, impl="reference", **kwargs)
  with pytest.raises(ValueError, match="unknown overflow_guard 'fast'"):
    mo.scale_by_sinkgd(5, overflow_guard="fast")


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_warm_start_and_guard_on_a_sharded_mesh_match_unsharded(kind):
  """On (fsdp=4, tensor=2): the update keeps the gradient's sharding, the
  state is sharded like the parameter's fan_in axes (as train.py shards it),
  and both equal the unsharded computation."""
  axis = {
    "explicit": jax.sharding.AxisType.Explicit,
    "auto": jax.sharding.AxisType.Auto,
  }[kind]
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(axis,) * 2)
  specs = {"up": P("fsdp", "tensor"), "stacked": P(None, "fsdp", "tensor")}
  state_specs = {"up": P("fsdp", None), "stacked": P(None, "fsdp", None)}
  host = [
    {"up": _rand((64, 32), s), "stacked": _rand((2, 64, 32), s + 1)}
    for s in (20, 22)
  ]
  tx = mo.scale_by_sinkgd(1, warm_start=True, overflow_guard="on_demand")
  expected, expected_state = _steps(
    tx, [jax.tree.map(jnp.asarray, g) for g in host]
  )
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  with jax.set_mesh(mesh):
    grads = [{k: put(g[k], specs[k]) for k in g} for g in host]
    state = tx.init(grads[0])
    state = mo.ScaleBySinkGDState(
      {k: put(state.col_scale[k], state_specs[k]) for k in specs}
    )
    outs, state = _steps(tx, grads, state)
  for k in specs:
    assert outs[-1][k].sharding.spec == specs[k]
    if kind == "explicit":
      assert state.col_scale[k].sharding.spec == state_specs[k]
    for a, b in zip(outs, expected):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
      state.col_scale[k], expected_state.col_scale[k], rtol=1e-5
    )


# ------------------------------------------------------------------ overflow guard


def _huge_and_tiny_rows():
  g = _rand((24, 16), 15)
  g[:, :5] *= np.float32(1e30)  # fan_out indices 0..4: huge rows of the paper
  g[:, 5:10] *= np.float32(1e-30)
  return g


def _with_zeros():
  g = _rand((24, 16), 16)
  g[4] = 0.0
  g[:, 7] = 0.0
  return g


GUARD_INPUTS = {
  "random": lambda: _rand((24, 16), 17),
  "2^120": lambda: _rand((24, 16), 18) * np.float32(2.0**120),
  "2^-120": lambda: _rand((24, 16), 19) * np.float32(2.0**-120),
  "1e38": lambda: _rand((24, 16), 20) / 5 * np.float32(1e38),
  "f32max": lambda: np.sign(_rand((24, 16), 21)) * np.float32(F32_MAX),
  "1e-38": lambda: _rand((24, 16), 22) * np.float32(1e-38),
  "1e-20": lambda: _rand((24, 16), 23) * np.float32(1e-20),
  "huge_and_tiny_rows": _huge_and_tiny_rows,
  "zero_rows_and_columns": _with_zeros,
  "zeros": lambda: np.zeros((24, 16), np.float32),
  "stacked": lambda: _rand((3, 24, 16), 24) * np.float32(1e-25),
}


@pytest.mark.parametrize("num_iters", [1, 5])
@pytest.mark.parametrize("name", GUARD_INPUTS)
def test_on_demand_guard_equals_the_max_abs_path(name, num_iters):
  g = {"k": jnp.asarray(GUARD_INPUTS[name]())}
  assert bool(jnp.isfinite(g["k"]).all())
  (guarded,), _ = _steps(
    mo.scale_by_sinkgd(num_iters, overflow_guard="on_demand"), [g]
  )
  (expected,), _ = _steps(mo.scale_by_sinkgd(num_iters), [g])
  assert bool(jnp.isfinite(guarded["k"]).all())
  np.testing.assert_allclose(guarded["k"], expected["k"], rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_on_demand_guard_keeps_the_nan_policy(bad):
  g = {"k": jnp.asarray(_rand((16, 12), 25)).at[1, 2].set(bad)}
  (u,), _ = _steps(mo.scale_by_sinkgd(5, overflow_guard="on_demand"), [g])
  assert bool(jnp.isnan(u["k"]).all())


def test_on_demand_guard_on_bfloat16_gradients():
  g = {"k": jnp.asarray(_rand((32, 16), 26) * 1e30, jnp.bfloat16)}
  (guarded,), _ = _steps(mo.scale_by_sinkgd(3, overflow_guard="on_demand"), [g])
  (expected,), _ = _steps(mo.scale_by_sinkgd(3), [g])
  assert guarded["k"].dtype == jnp.bfloat16
  np.testing.assert_allclose(
    guarded["k"].astype(jnp.float32), expected["k"].astype(jnp.float32)
  )


# ----------------------------------------------------------------- orientation
# A Flax kernel (fan_in, fan_out) with fan_out >= LONG_ROW keeps its long
# minor axis in the row half-step: that sum runs row by row on CPU.
LONG = sinkhorn.LONG_ROW


@pytest.mark.parametrize("guard", sinkhorn.OVERFLOW_GUARDS)
@pytest.mark.parametrize(
  "shape", [(24, LONG), (LONG, 24), (20, LONG + 8)], ids=str
)
def test_both_orientations_match_the_float64_reference(shape, guard):
  """(24, LONG) takes the row-by-row sum (its fan_in 24 has 8 = gcd(24, 16)
  blocks; 20 has 4), (LONG, 24) the plain reduction: both are SR-Sinkhorn to
  float32 rounding."""
  g = _rand(shape, 30)
  (u,), _ = _steps(
    mo.scale_by_sinkgd(5, overflow_guard=guard), [{"k": jnp.asarray(g)}]
  )
  expected = reference.sr_sinkhorn(g.T.astype(np.float64), 5).T
  np.testing.assert_allclose(u["k"], expected, rtol=2e-5, atol=2e-5)


def test_row_by_row_sum_equals_the_reduction_on_batched_and_scaled_inputs():
  """Stacked layers, a second reduced axis, a broadcast scale and a 2^-e
  prescaling: sum_of_squares_by_rows is the plain sum up to rounding."""
  x = jnp.asarray(_rand((3, 24, 2, LONG), 31))
  scale = jnp.asarray(np.abs(_rand((3, 24, 2, 1), 32)))
  amax = jnp.max(jnp.abs(x), axis=(1, 2, 3), keepdims=True)
  y_of = lambda x, m, s: sinkhorn.to_unit_max(x, m) * s
  for axes in [(1,), (1, 2)]:
    got = sinkhorn.sum_of_squares_by_rows(y_of, (x, amax, scale), axes)
    y = y_of(x, amax, scale)
    want = jnp.sum(y * y, axis=axes, keepdims=True)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_long_row_orientation_compiles_to_a_row_loop_on_cpu():
  """The structure, not the speed: the (fan_in, long fan_out) leaf's row sum
  is a while loop in the CPU program; the transposed leaf has none."""
  tx = mo.scale_by_sinkgd(1, warm_start=True, overflow_guard="on_demand")

  def hlo(shape):
    g = {"k": jnp.zeros(shape)}
    return jax.jit(tx.update).lower(g, tx.init(g)).compile().as_text().lower()

  assert "while" in hlo((64, LONG))  # 4 rows per block of 16
  assert "while" not in hlo((LONG, 64))
