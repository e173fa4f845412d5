"""sinkgd / swan as full optimizers, and the transforms inside optax and flax machinery."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import multinorm_optax as mo


def _mlp_params(key, sizes=(8, 32, 32, 1)):
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, sub = jax.random.split(key)
    params[f"dense_{i}"] = {
      "kernel": jax.random.normal(sub, (a, b)) / np.sqrt(a),
      "bias": jnp.zeros((b,)),
    }
  return params


def _mlp(params, x):
  n = len(params)
  for i in range(n):
    x = x @ params[f"dense_{i}"]["kernel"] + params[f"dense_{i}"]["bias"]
    if i < n - 1:
      x = jax.nn.gelu(x)
  return x


def _regression_data(n=256):
  x = jax.random.normal(jax.random.key(1), (n, 8))
  y = jnp.sin(x @ jnp.arange(1.0, 9.0)[:, None] / 4.0)
  return x, y


def _train(tx, steps=200):
  params = _mlp_params(jax.random.key(0))
  x, y = _regression_data()
  loss_fn = lambda p: jnp.mean((_mlp(p, x) - y) ** 2)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses


@pytest.mark.parametrize("make", [mo.sinkgd, mo.swan], ids=["sinkgd", "swan"])
def test_optimizer_trains_mlp_regression_well_below_initial_loss(make):
  # Normalized updates have a fixed size, so the lr must decay to settle.
  losses = _train(
    make(optax.cosine_decay_schedule(3e-2, 200), alpha=1.0), steps=200
  )
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_default_labels_send_embeddings_head_norms_biases_and_vectors_to_adam():
  params = {
    "embed": {"embedding": jnp.zeros((10, 4))},
    "layers": {
      "0": {
        "attn": {"q_proj": {"kernel": jnp.zeros((4, 4))}},
        "attn_norm": {"scale": jnp.zeros((4,))},
        "mlp": {
          "up_proj": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros((8,))}
        },
      }
    },
    "lm_head": {"kernel": jnp.zeros((4, 10))},
    "step_scale": jnp.zeros(()),
  }
  labels = mo.default_param_labels(params)
  assert labels["embed"]["embedding"] == "adam"
  assert labels["lm_head"]["kernel"] == "adam"
  assert labels["layers"]["0"]["attn_norm"]["scale"] == "adam"
  assert labels["layers"]["0"]["mlp"]["up_proj"]["bias"] == "adam"
  assert labels["step_scale"] == "adam"
  assert labels["layers"]["0"]["attn"]["q_proj"]["kernel"] == "multinorm"
  assert labels["layers"]["0"]["mlp"]["up_proj"]["kernel"] == "multinorm"


def test_sinkgd_matrix_update_is_minus_alpha_lr_times_sinkhorn_and_adam_elsewhere():
  params = _mlp_params(jax.random.key(2))
  grads = jax.tree.map(
    lambda p: jax.random.normal(jax.random.key(3), p.shape), params
  )
  lr, alpha = 1e-2, 0.05
  tx = mo.sinkgd(lr, alpha=alpha)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected_matrices, _ = mo.scale_by_sinkgd(5).update(
    {k: v["kernel"] for k, v in grads.items()}, None
  )
  for k in params:
    chex.assert_trees_all_close(
      updates[k]["kernel"], -alpha * lr * expected_matrices[k], rtol=1e-5
    )
  adam_updates, _ = optax.adamw(lr, weight_decay=0.0).update(
    grads, optax.adamw(lr).init(params), params
  )
  for k in params:
    chex.assert_trees_all_close(
      updates[k]["bias"], adam_updates[k]["bias"], rtol=1e-5
    )


def test_param_labels_override_as_tree_and_callable():
  params = _mlp_params(jax.random.key(4))
  grads = jax.tree.map(jnp.ones_like, params)
  all_adam = jax.tree.map(lambda _: "adam", params)
  for labels in (all_adam, lambda p: jax.tree.map(lambda _: "adam", p)):
    tx = mo.sinkgd(1e-2, param_labels=labels)
    updates, _ = tx.update(grads, tx.init(params), params)
    ref, _ = optax.adamw(1e-2, weight_decay=0.0).update(
      grads, optax.adamw(1e-2).init(params), params
    )
    chex.assert_trees_all_close(updates, ref, rtol=1e-5)


def test_transforms_have_empty_state_and_init_on_shape_dtype_structs():
  abstract = {"k": jax.ShapeDtypeStruct((16, 8), jnp.float32)}
  for tx in (
    mo.scale_by_sinkgd(),
    mo.scale_by_swan(),
    mo.multinorm([mo.sign], 1),
  ):
    state = tx.init(abstract)
    assert state == optax.EmptyState()
    assert jax.tree.leaves(state) == []
  # The full optimizers keep nothing per matrix: only AdamW's moments and counts.
  state = jax.eval_shape(mo.sinkgd(1e-3).init, _mlp_params(jax.random.key(0)))
  matrix_bytes = sum(x.size for x in jax.tree.leaves(state) if x.ndim >= 2)
  assert matrix_bytes == 0


def test_second_call_does_not_recompile():
  traces = []
  tx = mo.sinkgd(1e-3)

  @jax.jit
  def update(grads, state, params):
    traces.append(1)
    return tx.update(grads, state, params)

  params = _mlp_params(jax.random.key(0))
  state = tx.init(params)
  for seed in range(3):
    key = jax.random.key(seed)
    grads = jax.tree.map(
      lambda p, key=key: jax.random.normal(key, p.shape), params
    )
    _, state = update(grads, state, params)
  assert len(traces) == 1


def test_works_inside_multisteps_inject_hyperparams_and_partition():
  params = _mlp_params(jax.random.key(5))
  grads = jax.tree.map(
    lambda p: jax.random.normal(jax.random.key(6), p.shape), params
  )

  multi = optax.MultiSteps(mo.sinkgd(1e-2), every_k_schedule=2)
  state = multi.init(params)
  u1, state = jax.jit(multi.update)(grads, state, params)
  chex.assert_trees_all_equal(
    u1, jax.tree.map(jnp.zeros_like, params)
  )  # accumulating
  u2, state = jax.jit(multi.update)(grads, state, params)
  direct, _ = mo.sinkgd(1e-2).update(
    grads, mo.sinkgd(1e-2).init(params), params
  )
  chex.assert_trees_all_close(u2, direct, rtol=1e-5, atol=1e-7)

  injected = optax.inject_hyperparams(mo.sinkgd)(learning_rate=1e-2)
  state = injected.init(params)
  u, state = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(u, direct, rtol=1e-5, atol=1e-7)
  state.hyperparams["learning_rate"] = jnp.asarray(2e-2)
  u, _ = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(
    u["dense_0"]["kernel"], 2 * direct["dense_0"]["kernel"], rtol=1e-5
  )

  labels = jax.tree.map(lambda p: "norm" if p.ndim == 2 else "sgd", params)
  tx = optax.partition(
    {
      "norm": optax.chain(
        mo.multinorm([mo.row_l2, mo.col_l2], 5), optax.scale(-0.1)
      ),
      "sgd": optax.sgd(0.1),
    },
    labels,
  )
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  expected, _ = mo.scale_by_sinkgd(5).update(
    {"k": grads["dense_1"]["kernel"]}, None
  )
  chex.assert_trees_all_close(
    u["dense_1"]["kernel"], -0.1 * expected["k"], rtol=1e-5
  )


def test_schedule_learning_rate_is_scaled_by_alpha():
  schedule = optax.linear_schedule(1.0, 0.0, 10)
  params = {"k": jnp.ones((4, 4))}
  grads = {
    "k": jnp.asarray(
      np.random.default_rng(0).standard_normal((4, 4)), jnp.float32
    )
  }
  tx = mo.sinkgd(schedule, alpha=0.5)
  state = tx.init(params)
  u0, state = tx.update(grads, state, params)
  u1, state = tx.update(grads, state, params)
  chex.assert_trees_all_close(u1["k"], 0.9 * u0["k"], rtol=1e-5)


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(16, 8, rngs=rngs)
    self.hidden = nnx.Linear(8, 8, rngs=rngs)
    self.norm = nnx.RMSNorm(8, rngs=rngs)
    self.lm_head = nnx.Linear(8, 16, use_bias=False, rngs=rngs)

  def __call__(self, tokens):
    return self.lm_head(self.norm(jax.nn.gelu(self.hidden(self.embed(tokens)))))


def test_nnx_optimizer_with_sinkgd_trains_and_labels_by_path(
  next_token_losses,
):
  model = _Block(nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(0), (8, 12), 0, 16)
  losses = next_token_losses(model, mo.sinkgd(3e-2, alpha=1.0), tokens, 60)
  assert losses[-1] < 0.5 * losses[0]
  labels = mo.default_param_labels(nnx.state(model, nnx.Param))
  flat = {
    jax.tree_util.keystr(p, simple=True, separator="/"): v
    for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]
  }
  assert len(flat) == 5, flat
  assert {k for k, v in flat.items() if v == "multinorm"} == {
    "hidden/kernel/value"
  }, flat


def _decay_params():
  k = iter(jax.random.split(jax.random.key(0), 8))
  return {
    "embed": {"embedding": jax.random.normal(next(k), (16, 8))},
    "block": {
      "attn_norm": {"scale": 1.0 + jax.random.normal(next(k), (8,))},
      "mlp": {
        "kernel": jax.random.normal(next(k), (8, 8)),
        "bias": jax.random.normal(next(k), (8,)),
      },
    },
    "lm_head": {"kernel": jax.random.normal(next(k), (8, 16))},
  }


@pytest.mark.parametrize("name", ["sinkgd", "swan"])
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_weight_decay_skips_vectors_norms_and_embeddings(
  name, decay_embeddings
):
  # Zero gradients: the whole update is weight decay, -step * wd * p, exactly
  # where it applies and nowhere else.
  lr, alpha, wd = 0.1, 0.05, 0.5
  params = _decay_params()
  grads = jax.tree.map(jnp.zeros_like, params)
  mask = None
  if decay_embeddings:
    mask = lambda p: mo.default_weight_decay_mask(p, decay_embeddings=True)
  tx = getattr(mo, name)(
    lr, alpha=alpha, weight_decay=wd, weight_decay_mask=mask
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = {
    "embed": {
      "embedding": -lr * wd * params["embed"]["embedding"]
      if decay_embeddings
      else jnp.zeros((16, 8))
    },
    "block": {
      "attn_norm": {"scale": jnp.zeros(8)},
      "mlp": {
        "kernel": -alpha * lr * wd * params["block"]["mlp"]["kernel"],
        "bias": jnp.zeros(8),
      },
    },
    "lm_head": {"kernel": -lr * wd * params["lm_head"]["kernel"]},
  }
  chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-7)


def test_weight_decay_mask_as_a_tree_equals_the_callable():
  params = _decay_params()
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  as_tree = mo.default_weight_decay_mask(params)
  assert as_tree["lm_head"]["kernel"] and not as_tree["embed"]["embedding"]
  updates = []
  for mask in (None, as_tree):
    tx = mo.sinkgd(0.1, weight_decay=0.5, weight_decay_mask=mask)
    updates.append(tx.update(grads, tx.init(params), params)[0])
  chex.assert_trees_all_equal(*updates)


def test_default_weight_decay_mask_on_the_llama():
  from models.llama import Llama, get_config

  model = Llama(get_config("tiny"), rngs=nnx.Rngs(0))
  mask = mo.default_weight_decay_mask(nnx.state(model, nnx.Param))
  flat = {
    jax.tree_util.keystr(p, simple=True, separator="/"): v
    for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  decayed = {k for k, v in flat.items() if v}
  assert decayed, flat
  assert all("norm" not in k and "embed" not in k for k in decayed), decayed
  assert all(k in decayed for k in flat if k.endswith("kernel/value")), (
    flat
  )  # every Dense kernel, the LM head included
