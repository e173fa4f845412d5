"""SWAN: whitening modes, their accuracy against a float64 reference, and optax machinery."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multinorm_optax as mo
from multinorm_optax.normalizers import WHITEN_MODES, polar_quintic_schedule


def _params_and_grads():
  keys = jax.random.split(jax.random.key(0), 4)
  params = {
    "dense_0": {"kernel": jax.random.normal(keys[0], (16, 24))},
    "dense_1": {"kernel": jax.random.normal(keys[1], (24, 8))},
    "norm": {"scale": jnp.ones((8,))},
  }
  grads = {
    "dense_0": {"kernel": jax.random.normal(keys[2], (16, 24))},
    "dense_1": {"kernel": jax.random.normal(keys[3], (24, 8))},
    "norm": {"scale": jnp.full((8,), 0.5)},
  }
  return params, grads


def _matrix(m, n, cond, rank=None, seed=0):
  """float32 (m, n) with singular values geometric from 1 to 1/cond (then 0s)."""
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  rank = k if rank is None else rank
  s = np.where(np.arange(k) < rank, np.geomspace(1.0, 1.0 / cond, k), 0.0)
  return ((u * s) @ v.T).astype(np.float32)


def _polar64(g):
  """Float64 reference: U_r V_r^T from the SVD, r = singular values > 1e-5 max."""
  u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  keep = s > 1e-5 * s.max()
  return u[:, keep] @ vt[keep], u[:, keep]


@pytest.mark.parametrize("mode", WHITEN_MODES)
def test_swan_under_inject_hyperparams_equals_plain_swan_and_lr_is_live(mode):
  params, grads = _params_and_grads()
  tx = mo.swan(1e-2, whiten_mode=mode, ns_steps=4)
  direct, _ = tx.update(grads, tx.init(params), params)
  injected = optax.inject_hyperparams(mo.swan)(
    learning_rate=1e-2, whiten_mode=mode, ns_steps=4
  )
  state = injected.init(params)
  assert "ns_steps" in state.hyperparams  # traced inside the jitted update
  u, state = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(u, direct, rtol=1e-4, atol=1e-6)
  state.hyperparams["learning_rate"] = jnp.asarray(2e-2)
  u, _ = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(
    u["dense_0"]["kernel"],
    2 * direct["dense_0"]["kernel"],
    rtol=1e-4,
    atol=1e-6,
  )
  # The one-liner, with the defaults.
  injected = optax.inject_hyperparams(mo.swan)(learning_rate=1e-2)
  u, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  assert all(jnp.isfinite(x).all() for x in jax.tree.leaves(u))


@pytest.mark.parametrize("mode", WHITEN_MODES)
def test_traced_step_count_equals_the_same_static_count(mode):
  g = jax.random.normal(jax.random.key(1), (12, 20))
  for steps in (1, 4, 9):
    static = mo.whiten(g, mode=mode, ns_steps=steps)
    traced = jax.jit(lambda g, k: mo.whiten(g, mode=mode, ns_steps=k))(g, steps)
    chex.assert_trees_all_close(traced, static, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(48, 160), (160, 48), (64, 64)])
@pytest.mark.parametrize("cond", [1.0, 1e2])
def test_exact_mode_matches_float64_polar_factor(shape, cond):
  g = _matrix(*shape, cond)
  ref, _ = _polar64(g)
  out = np.asarray(mo.whiten(jnp.asarray(g), mode="exact"), np.float64)
  # float32 Gram matrix: its rounding (~1e-7 of the largest eigenvalue) is
  # what limits the singular values, to ~1e-4 at condition number 1e2 (7e-4
  # for the 48 x 48 Gram matrix of the tall case).
  np.testing.assert_allclose(out, ref, atol=1e-3)
  np.testing.assert_allclose(
    np.linalg.svd(out, compute_uv=False), 1.0, atol=1e-3
  )


def test_exact_mode_multiplies_in_full_float32_on_every_backend():
  # GPUs multiply float32 matrices in TF32 and TPUs in one bfloat16 pass by
  # default: the Gram matrix's small eigenvalues (s^2) would be lost there,
  # while this CPU test would pass. So every product of "exact" asks for
  # HIGHEST, and the cheaper modes leave the choice to the backend.
  g = jnp.ones((8, 12))
  for mode, precision in [("exact", "HIGHEST"), ("fast", "DEFAULT")]:
    whiten = functools.partial(mo.whiten, mode=mode)
    text = jax.jit(whiten).lower(g).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert dots
    assert all(f"precision = [{precision}, {precision}]" in d for d in dots)


def test_exact_mode_on_rank_deficient_input_is_the_pseudo_polar_factor():
  g = _matrix(48, 160, 1e2, rank=24)
  ref, u = _polar64(g)
  out = np.asarray(mo.whiten(jnp.asarray(g), mode="exact"), np.float64)
  np.testing.assert_allclose(out, ref, atol=2e-3)
  np.testing.assert_allclose(
    np.linalg.svd(u.T @ out, compute_uv=False), 1.0, atol=3e-4
  )
  # The null space's rounding noise (~sqrt(eps) of the largest singular
  # value, after the Gram matrix) is amplified by the iteration but stays small.
  null = out - u @ (u.T @ out)
  assert np.linalg.norm(null, 2) < 1e-2


def test_exact_mode_at_condition_1e4_leaves_only_the_smallest_below_one():
  # A float32 Gram matrix cannot resolve singular values below ~1e-3 of the
  # largest: they come out smaller than 1 (never larger, never NaN).
  g = _matrix(48, 160, 1e4)
  s_in = np.linalg.svd(g.astype(np.float64), compute_uv=False)
  out = np.asarray(mo.whiten(jnp.asarray(g), mode="exact"), np.float64)
  u, _, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  s_out = np.diag(u.T @ out @ vt.T)  # the output's value on each input pair
  assert np.all(s_out <= 1 + 1e-3), s_out.max()
  assert np.all(s_out > 0)
  np.testing.assert_allclose(s_out[s_in > 1e-2], 1.0, atol=1e-3)


@pytest.mark.parametrize("steps", [2, 3, 4])
@pytest.mark.parametrize("shape", [(48, 160), (160, 48)])
def test_fast_mode_singular_values_stay_inside_the_designed_band(steps, shape):
  # Normalized singular values in the design interval [1e-2, 1] come out
  # within the schedule's error E of 1 (plus float32 rounding).
  band = polar_quintic_schedule(1e-2, steps)[-1][3]
  g = _matrix(*shape, 50.0)
  out = np.asarray(mo.whiten(jnp.asarray(g), mode="fast", ns_steps=steps))
  s = np.linalg.svd(out.astype(np.float64), compute_uv=False)
  assert np.all(np.abs(s - 1) <= band + 1e-4), (s.min(), s.max(), band)


def test_polar_quintic_schedule_is_minimax_and_converges():
  table = polar_quintic_schedule(1e-3, 9)
  lo, hi = 1e-3, 1.0
  errors = []
  for a, b, c, e in table:
    x = np.geomspace(lo, hi, 20001)
    p = x * (a + b * x**2 + c * x**4)
    assert np.all(p > 0)  # no singular value changes sign
    below = np.linspace(0, lo, 1001)  # below the interval: increasing, < 1
    p_below = below * (a + b * below**2 + c * below**4)
    assert np.all(np.diff(p_below) > 0) and p_below[-1] <= 1
    np.testing.assert_allclose(np.abs(1 - p).max(), e, rtol=1e-6, atol=1e-12)
    lo, hi = p.min(), p.max()
    errors.append(e)
  assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:5]))
  assert errors[6] < 1e-8
  np.testing.assert_allclose(table[-1][:3], (15 / 8, -10 / 8, 3 / 8))


@pytest.mark.parametrize("mode", WHITEN_MODES)
def test_zero_and_batched_inputs(mode):
  assert not np.any(np.asarray(mo.whiten(jnp.zeros((8, 12)), mode=mode)))
  g = jax.random.normal(jax.random.key(2), (3, 8, 12))
  batched = mo.whiten(g, mode=mode)
  for i in range(3):
    chex.assert_trees_all_close(
      batched[i], mo.whiten(g[i], mode=mode), atol=1e-5
    )


def test_unknown_mode_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown mode 'svd'"):
    mo.whiten(jnp.ones((2, 3)), mode="svd")
  with pytest.raises(ValueError, match="unknown whiten_mode 'svd'"):
    mo.scale_by_swan(whiten_mode="svd")
