"""The optional momentum of the normalized group (sinkgd, swan): both orders
against a float64 reference written from their equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multinorm_optax as mo
from tests import reference

LR, ALPHA, BETA = 1e-2, 0.05, 0.9


def _params_and_grads(steps=3):
  rng = np.random.default_rng(0)
  params = {
    "mlp": {"kernel": jnp.asarray(rng.standard_normal((12, 8)), jnp.float32)},
    "norm": {"scale": jnp.ones(8)},
  }
  grads = [
    jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params
    )
    for _ in range(steps)
  ]
  return params, grads


def _matrix_updates(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = jax.jit(tx.update)(g, state, params)
    out.append(np.asarray(u["mlp"]["kernel"], np.float64))
  return out


def _normalize(g):
  """SR-Sinkhorn L=5 of a Flax (fan_in, fan_out) kernel, in float64."""
  return reference.sr_sinkhorn(np.asarray(g, np.float64).T, 5).T


def _reference(grads, order, nesterov):
  """-alpha lr times the momentum direction, written from the equations."""
  buf, out = 0.0, []
  for g in grads:
    g = np.asarray(g["mlp"]["kernel"], np.float64)
    if order == "normalize_then_average":
      buf = BETA * buf + _normalize(g)
      direction = (1 - BETA) * (_normalize(g) + BETA * buf if nesterov else buf)
    else:
      buf = BETA * buf + g
      direction = _normalize(g + BETA * buf if nesterov else buf)
    out.append(-ALPHA * LR * direction)
  return out


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("order", mo.alias.MOMENTUM_ORDERS)
def test_sinkgd_momentum_equals_a_float64_reference_over_three_steps(
  order, nesterov
):
  params, grads = _params_and_grads()
  tx = mo.sinkgd(
    LR, alpha=ALPHA, momentum=BETA, nesterov=nesterov, momentum_order=order
  )
  got = _matrix_updates(tx, params, grads)
  for a, b in zip(got, _reference(grads, order, nesterov)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)


def test_momentum_none_is_todays_sinkgd_and_zero_is_the_same_step():
  params, grads = _params_and_grads()
  plain = _matrix_updates(mo.sinkgd(LR), params, grads)
  for a, b in zip(
    _matrix_updates(mo.sinkgd(LR, momentum=None), params, grads), plain
  ):
    np.testing.assert_array_equal(a, b)
  for order in mo.alias.MOMENTUM_ORDERS:
    tx = mo.sinkgd(LR, momentum=0.0, momentum_order=order)
    for a, b in zip(_matrix_updates(tx, params, grads), plain):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_momentum_state_is_one_buffer_per_matrix():
  params, _ = _params_and_grads()
  plain = jax.tree.leaves(mo.sinkgd(LR).init(params))
  state = jax.tree.leaves(mo.sinkgd(LR, momentum=BETA).init(params))
  added = sum(x.size for x in state) - sum(x.size for x in plain)
  assert added == params["mlp"]["kernel"].size


def test_swan_momentum_normalize_then_average():
  params, grads = _params_and_grads()
  tx = mo.swan(LR, alpha=ALPHA, momentum=BETA, whiten_mode="newton_schulz")
  got = _matrix_updates(tx, params, grads)
  buf = 0.0
  for a, g in zip(got, grads):
    g = np.asarray(g["mlp"]["kernel"], np.float64)
    buf = BETA * buf + reference.swan(g.T).T
    np.testing.assert_allclose(
      a, -ALPHA * LR * (1 - BETA) * buf, atol=3e-5 * ALPHA * LR
    )


def test_bad_momentum_is_a_clear_error():
  with pytest.raises(
    ValueError, match=r"momentum must be in \[0, 1\), got 1.5"
  ):
    mo.sinkgd(LR, momentum=1.5)
  with pytest.raises(ValueError, match="unknown momentum_order 'sideways'"):
    mo.sinkgd(LR, momentum=0.5, momentum_order="sideways")


def _moment_dtypes(state) -> dict:
  """dtype of AdamW's first and second moments and of the momentum buffer."""
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    for field in ("mu", "nu", "trace"):
      if f"/{field}/" in f"/{name}/":
        found.setdefault(field, set()).add(jnp.dtype(leaf.dtype))
  return found


@pytest.mark.parametrize("make", [mo.sinkgd, mo.swan], ids=["sinkgd", "swan"])
@pytest.mark.parametrize(
  "param_dtype, mu_dtype",
  [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)],
  ids=["bf16_params_f32_moments", "f32_params_bf16_moments"],
)
@pytest.mark.parametrize("order", mo.alias.MOMENTUM_ORDERS)
def test_mu_dtype_sets_adams_first_moment_and_the_momentum_buffer(
  make, param_dtype, mu_dtype, order
):
  """As optax.adamw's mu_dtype: the first moment (and our momentum buffer)
  in mu_dtype, the second moment in the parameters' dtype; the step runs."""
  params, grads = _params_and_grads(2)
  params = jax.tree.map(lambda p: p.astype(param_dtype), params)
  grads = [jax.tree.map(lambda g: g.astype(param_dtype), g) for g in grads]
  tx = make(LR, momentum=BETA, momentum_order=order, mu_dtype=mu_dtype)
  state = tx.init(params)
  want = {
    "mu": {jnp.dtype(mu_dtype)},
    "nu": {jnp.dtype(param_dtype)},
    "trace": {jnp.dtype(mu_dtype)},
  }
  assert _moment_dtypes(state) == want
  for g in grads:
    u, state = jax.jit(tx.update)(g, state, params)
  assert _moment_dtypes(state) == want
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
  # Without mu_dtype every moment keeps the parameters' dtype, as before.
  default = _moment_dtypes(make(LR, momentum=BETA).init(params))
  assert default == {k: {jnp.dtype(param_dtype)} for k in want}
