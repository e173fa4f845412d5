"""SWAN: whitening modes, their accuracy against a float64 reference, and optax machinery."""

import chex
import jax
import jax.numpy as jnp
import optax

import multinorm_optax as mo


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


def test_swan_under_inject_hyperparams_equals_plain_swan_and_lr_is_live():
  params, grads = _params_and_grads()
  direct, _ = mo.swan(1e-2).update(grads, mo.swan(1e-2).init(params), params)
  injected = optax.inject_hyperparams(mo.swan)(learning_rate=1e-2)
  state = injected.init(params)
  assert "ns_steps" in state.hyperparams  # traced inside the jitted update
  u, state = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(u, direct, rtol=1e-5, atol=1e-6)
  state.hyperparams["learning_rate"] = jnp.asarray(2e-2)
  u, _ = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(
    u["dense_0"]["kernel"],
    2 * direct["dense_0"]["kernel"],
    rtol=1e-5,
    atol=1e-8,
  )


def test_traced_step_count_equals_the_same_static_count():
  g = jax.random.normal(jax.random.key(1), (12, 20))
  for steps in (1, 4, 10):
    static = mo.whiten(g, ns_steps=steps)
    traced = jax.jit(lambda g, k: mo.whiten(g, ns_steps=k))(g, steps)
    chex.assert_trees_all_close(traced, static, rtol=1e-5, atol=1e-6)
