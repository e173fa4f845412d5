"""sinkgd_stateless: no optimizer state, a normalized step for every group."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import multinorm_optax as mo
from models.llama import Llama, get_config

VOCAB_USED = 100  # the batch uses tokens 0..99 of the tiny model's 256
LR, REST_LR, ALPHA = 0.02, 3e-3, 0.05


@pytest.fixture(scope="module")
def llama_grads():
  """(params, grads) of the tiny LLaMA on a batch of tokens below VOCAB_USED."""
  model = Llama(get_config("tiny", n_layers=2), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, VOCAB_USED)

  def loss_fn(params):
    nnx.replace_by_pure_dict(state, params)
    logits = nnx.merge(graphdef, state)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, tokens[:, 1:]
    ).mean()

  params = nnx.to_pure_dict(state)
  return params, jax.grad(loss_fn)(params)


def _rms(x):
  return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def test_state_holds_nothing_but_step_counts(llama_grads):
  params, _ = llama_grads
  schedule = optax.linear_schedule(0.0, LR, 10)
  for lr, rest_lr in ((LR, REST_LR), (schedule, schedule)):
    tx = mo.sinkgd_stateless(lr, rest_learning_rate=rest_lr)
    state = tx.init(params)
    leaves = jax.tree.leaves(state)
    assert all(x.shape == () and x.dtype == jnp.int32 for x in leaves)
    # one count per scheduled group (4 groups): 16 bytes against the
    # paper's recipe's two AdamW moments of the embedding, head and norms
    assert sum(x.nbytes for x in leaves) <= 16
  sinkgd_state = mo.sinkgd(LR).init(params)
  assert sum(x.nbytes for x in jax.tree.leaves(sinkgd_state)) > 2 * 4 * (
    params["embed"]["embedding"].size + params["lm_head"]["kernel"].size
  )


def test_one_step_moves_every_leaf_with_gradient_and_no_unseen_token(
  llama_grads,
):
  params, grads = llama_grads
  tx = mo.sinkgd_stateless(LR, rest_learning_rate=REST_LR, alpha=ALPHA)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for (path, g), p, q in zip(
    jax.tree_util.tree_leaves_with_path(grads),
    jax.tree.leaves(params),
    jax.tree.leaves(new),
  ):
    name = jax.tree_util.keystr(path)
    assert jnp.all(jnp.isfinite(q)), name
    moved = np.asarray(p != q)
    if name.startswith("['embed']"):
      # A token's row moves iff the token was in the batch (had a gradient).
      seen = np.asarray(jnp.any(g != 0, axis=1))
      assert seen[:VOCAB_USED].any() and not seen[VOCAB_USED:].any()
      np.testing.assert_array_equal(moved.any(axis=1), seen)
      np.testing.assert_array_equal(np.asarray(q)[~seen], np.asarray(p)[~seen])
    else:
      assert jnp.any(g != 0), name
      np.testing.assert_array_equal(moved, np.asarray(g != 0), err_msg=name)


def test_each_group_takes_its_documented_step(llama_grads):
  """Against float64 references written from the docstring's formulas."""
  params, grads = llama_grads
  tx = mo.sinkgd_stateless(LR, rest_learning_rate=REST_LR, alpha=ALPHA)
  u, _ = tx.update(grads, tx.init(params), params)
  f64 = lambda x: np.asarray(x, np.float64)

  # Embedding: each seen token's vector to RMS 1, times rest lr.
  g = f64(grads["embed"]["embedding"])
  norms = np.linalg.norm(g, axis=1, keepdims=True)
  d = g.shape[1]
  expected = -REST_LR * np.sqrt(d) * g / np.where(norms > 0, norms, 1.0)
  np.testing.assert_allclose(
    u["embed"]["embedding"], expected, rtol=1e-5, atol=1e-9
  )
  seen = norms[:, 0] > 0
  row_rms = np.sqrt(np.mean(f64(u["embed"]["embedding"]) ** 2, axis=1))
  np.testing.assert_allclose(row_rms[seen], REST_LR, rtol=1e-5)

  # Vectors: -rest_lr * sign(g).
  scale_g = f64(grads["norm"]["scale"])
  np.testing.assert_array_equal(
    f64(u["norm"]["scale"]), -np.float32(REST_LR) * np.sign(scale_g)
  )

  # Head: SR-Sinkhorn at rest lr (RMS rest_lr: every column to sqrt(m)).
  head, _ = mo.scale_by_sinkgd(5).update(
    {"k": grads["lm_head"]["kernel"]}, None
  )
  chex.assert_trees_all_close(
    u["lm_head"]["kernel"], -REST_LR * head["k"], rtol=1e-6
  )
  assert _rms(u["lm_head"]["kernel"]) == pytest.approx(REST_LR, rel=1e-5)

  # Hidden matrices: exactly sinkgd's step.
  ref, _ = mo.sinkgd(LR, alpha=ALPHA).update(
    grads, mo.sinkgd(LR).init(params), params
  )
  for block, ref_block in zip(u["layers"].values(), ref["layers"].values()):
    chex.assert_trees_all_equal(block["attn"], ref_block["attn"])
    chex.assert_trees_all_equal(block["mlp"], ref_block["mlp"])
  q = u["layers"][0]["attn"]["q_proj"]["kernel"]
  assert _rms(q) == pytest.approx(ALPHA * LR, rel=1e-5)


def test_works_under_inject_hyperparams_and_with_schedules(llama_grads):
  params, grads = llama_grads
  direct = mo.sinkgd_stateless(LR, rest_learning_rate=REST_LR)
  expected, _ = direct.update(grads, direct.init(params), params)
  injected = optax.inject_hyperparams(mo.sinkgd_stateless)(
    learning_rate=LR, rest_learning_rate=REST_LR
  )
  state = injected.init(params)
  u, state = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(u, expected, rtol=1e-6, atol=1e-10)
  state.hyperparams["rest_learning_rate"] = jnp.asarray(2 * REST_LR)
  u, _ = jax.jit(injected.update)(grads, state, params)
  chex.assert_trees_all_close(
    u["norm"]["scale"], 2 * expected["norm"]["scale"], rtol=1e-6
  )
  chex.assert_trees_all_close(
    u["lm_head"]["kernel"], 2 * expected["lm_head"]["kernel"], rtol=1e-6
  )
  chex.assert_trees_all_close(
    u["layers"][0]["mlp"], expected["layers"][0]["mlp"], rtol=1e-6
  )


def test_labels_of_stacked_layers_tied_tables_and_biases():
  params = {
    "wte": jnp.zeros((16, 8)),  # a tied table: no head
    "layers": {
      "attn_norm": {"scale": jnp.ones((3, 8))},  # --scan-layers: (layers, d)
      "mlp": {"kernel": jnp.zeros((3, 8, 8)), "bias": jnp.zeros((3, 8))},
    },
    "classifier": {"kernel": jnp.zeros((8, 4))},
    "temperature": jnp.ones(()),
  }
  expected = {
    "wte": "embedding",
    "layers": {
      "attn_norm": {"scale": "vector"},
      "mlp": {"kernel": "multinorm", "bias": "vector"},
    },
    "classifier": {"kernel": "head"},
    "temperature": "vector",
  }
  stacked = lambda path, leaf: mo.DimensionNumbers(leaf.ndim - 2, leaf.ndim - 1)
  assert mo.stateless_param_labels(params, stacked) == expected
  # Nothing declared: the (layers, in, out) kernel's axes are unknown, so it
  # takes the elementwise (sign) step, which needs no layout.
  expected["layers"]["mlp"]["kernel"] = "vector"
  assert mo.stateless_param_labels(params) == expected
  # Every group present or absent, the transform runs.
  tx = mo.sinkgd_stateless(LR)
  grads = jax.tree.map(jnp.ones_like, params)
  u, _ = tx.update(grads, tx.init(params), params)
  assert u["temperature"] == -jnp.float32(LR)


@pytest.mark.parametrize("scale", [1.0, 2.0**70, 2.0**-70])
def test_default_guard_is_on_demand_and_matches_the_max_abs_step(
  llama_grads, scale
):
  # The default reads max|G| only when a sum of squares over- or underflows
  # (2^70: every square overflows; 2^-70: every square underflows, so the
  # whole step is redone on G / max|G|). Either way the step is max_abs's up
  # to float32 rounding, and equal to an explicit on_demand bit for bit.
  params, grads = llama_grads
  grads = jax.tree.map(lambda g: g * jnp.float32(scale), grads)

  def step(**kwargs):
    tx = mo.sinkgd_stateless(LR, rest_learning_rate=REST_LR, **kwargs)
    return jax.jit(tx.update)(grads, tx.init(params), params)[0]

  default = step()
  chex.assert_trees_all_equal(default, step(overflow_guard="on_demand"))
  chex.assert_trees_all_close(
    default, step(overflow_guard="max_abs"), rtol=1e-5, atol=1e-9
  )
  assert all(jnp.isfinite(x).all() for x in jax.tree.leaves(default))


def test_default_guard_reads_the_gradient_one_time_less():
  # The max_abs guard's extra full read of G, max|abs(G)| over the matrix, is
  # gone from the step that runs unless a sum over- or underflows: the
  # compiled update has its reduce only inside the conditional's rescale path.
  head = {"lm_head": {"kernel": jnp.ones((64, 96))}}

  def max_reductions_outside_conditionals(**kwargs):
    tx = mo.sinkgd_stateless(LR, **kwargs)
    text = (
      jax.jit(tx.update)
      .lower(head, tx.init(head), head)
      .as_text(dialect="stablehlo")
    )
    entry = text.split("stablehlo.case")[0]
    return entry.count("stablehlo.maximum")

  assert max_reductions_outside_conditionals(overflow_guard="max_abs") > 0
  assert max_reductions_outside_conditionals() == 0


def test_reference_impl_takes_the_max_abs_guard_unless_told_otherwise(
  llama_grads,
):
  # The materialized normalizations have only the max|G| path: left unset,
  # the guard follows impl; asked for on_demand, impl="reference" refuses.
  params, grads = llama_grads

  def step(**kwargs):
    tx = mo.sinkgd_stateless(LR, rest_learning_rate=REST_LR, **kwargs)
    return jax.jit(tx.update)(grads, tx.init(params), params)[0]

  assert mo.alias.stateless_overflow_guard("reference") == "max_abs"
  assert mo.alias.stateless_overflow_guard("auto") == "on_demand"
  chex.assert_trees_all_close(
    step(impl="reference"), step(), rtol=1e-5, atol=1e-9
  )
  with pytest.raises(ValueError, match="need impl='fused'"):
    mo.sinkgd_stateless(LR, impl="reference", overflow_guard="on_demand")
