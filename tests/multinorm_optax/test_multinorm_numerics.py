"""The transforms at the edges of float32: huge and tiny gradients, a traced
`num_iters` of 0, and `jax.grad` through an update with a zero row and column."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multinorm_optax as mo
from tests import reference

F32_MAX = float(np.finfo(np.float32).max)
BF16_MAX = float(jnp.finfo(jnp.bfloat16).max)

TRANSFORMS = {
  "sinkgd-fused": (
    lambda: mo.scale_by_sinkgd(5, impl="fused"),
    lambda g: reference.sr_sinkhorn(g, 5),
    2e-4,
  ),
  "sinkgd-reference": (
    lambda: mo.scale_by_sinkgd(5, impl="reference"),
    lambda g: reference.sr_sinkhorn(g, 5),
    2e-4,
  ),
  "swan": (mo.scale_by_swan, reference.swan, 3e-2),
}


def _paper_view_update(tx, g):
  """The update of a Flax kernel g.T, back in the paper's (m, n) view."""
  grads = {"kernel": jnp.asarray(g).T}
  out, _ = jax.jit(tx.update)(grads, tx.init(grads))
  return np.asarray(out["kernel"].astype(jnp.float32), np.float64).T


def _unit_gradient(shape, seed):
  """Entries of size 1/2 .. 1 with random signs: scaled down to 1e-37 they
  stay normal float32 numbers (nothing for the hardware to flush)."""
  rng = np.random.default_rng(seed)
  size = rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
  return size.astype(np.float32)


@pytest.mark.parametrize(
  "top", [1e38, 3e38, F32_MAX, 1e-37, 1.0], ids=lambda t: f"max|G|={t:g}"
)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_update_is_scale_invariant_up_to_float32_max(name, top):
  make, ref, atol = TRANSFORMS[name]
  g = _unit_gradient((24, 40), seed=1)
  g = (g / np.abs(g).max() * np.float32(top)).astype(np.float32)
  assert np.isfinite(g).all() and np.abs(g).max() == np.float32(top)
  out = _paper_view_update(make(), g)
  expected = ref(np.asarray(g, np.float64) / top)
  np.testing.assert_allclose(out, expected, atol=atol * np.sqrt(40))


@pytest.mark.parametrize("top", [1e38, BF16_MAX], ids=lambda t: f"{t:g}")
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_bfloat16_gradients_near_bfloat16_max_are_normalized(impl, top):
  g = _unit_gradient((32, 16), seed=2)
  g = jnp.asarray(g / np.abs(g).max() * top, jnp.bfloat16)
  assert bool(jnp.isfinite(g).all())
  out = _paper_view_update(mo.scale_by_sinkgd(5, impl=impl), g)
  expected = reference.sr_sinkhorn(np.asarray(g.astype(jnp.float32)), 5)
  np.testing.assert_allclose(out, expected, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ num_iters


@pytest.mark.parametrize(
  "make",
  [
    lambda n: mo.scale_by_sinkgd(num_iters=n, impl="fused"),
    lambda n: mo.scale_by_sinkgd(num_iters=n, impl="reference"),
    lambda n: mo.multinorm([mo.row_l2, mo.col_l2], num_iters=n),
  ],
  ids=["sinkgd-fused", "sinkgd-reference", "multinorm"],
)
def test_traced_num_iters_below_one_gives_nan_as_the_static_path_raises(make):
  with pytest.raises(ValueError, match="num_iters must be >= 1"):
    make(0)
  grads = {"kernel": jnp.asarray(_unit_gradient((16, 8), seed=3))}
  injected = optax.inject_hyperparams(make)(2)
  state = injected.init(grads)
  update = jax.jit(injected.update)
  # A traced count of 2 is the static path with 2.
  out, state = update(grads, state)
  static, _ = make(2).update(grads, make(2).init(grads))
  np.testing.assert_allclose(out["kernel"], static["kernel"], rtol=1e-6)
  # Driven to 0 (or below): NaN, never an unnormalized gradient.
  for n in (0, -1):
    state.hyperparams["n"] = jnp.asarray(n)
    out, _ = update(grads, state)
    assert bool(jnp.isnan(out["kernel"]).all()), n


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_grad_through_update_with_zero_row_and_column_stays_local(impl):
  """The zero row and column do not touch the rest: the gradient there is the
  gradient of the same matrix without them (times sqrt(m / (m - 1)), the column
  norm's target ratio, as columns are normalized last), and finite everywhere."""
  m, n = 12, 20
  g = jnp.asarray(_unit_gradient((m, n), seed=4))
  g = g.at[3].set(0.0).at[:, 5].set(0.0)
  weights = jnp.asarray(np.random.default_rng(5).normal(size=(m, n)), g.dtype)
  tx = mo.scale_by_sinkgd(5, impl=impl)

  def f(g, w):
    out, _ = tx.update({"kernel": g.T}, tx.init({"kernel": g.T}))
    return jnp.sum(out["kernel"].T * w)

  full = jax.grad(f)(g, weights)
  assert bool(jnp.isfinite(full).all())
  keep_rows = np.arange(m) != 3
  keep_cols = np.arange(n) != 5
  small = jax.grad(f)(
    g[keep_rows][:, keep_cols], weights[keep_rows][:, keep_cols]
  )
  np.testing.assert_allclose(
    np.asarray(full)[keep_rows][:, keep_cols],
    np.sqrt(m / (m - 1)) * np.asarray(small),
    rtol=1e-3,
    atol=1e-5,
  )
