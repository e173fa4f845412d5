"""The label rule of the recipes on real Flax modules: 2-D or declared leaves are
normalized, every other leaf with more than two axes goes to AdamW."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import multinorm_optax as mo
from models import llama

LR = 1e-2


class _Zoo(nnx.Module):
  """One of each layer kind whose kernel is not a plain 2-D matrix."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(8, 6, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
    )
    self.einsum = nnx.Einsum("ab,bcd->acd", (8, 2, 4), rngs=rngs)
    self.conv = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap
    def stacked(rngs):
      return nnx.Linear(8, 8, rngs=rngs)

    self.scanned = stacked(rngs)  # (layers, in, out), as under nnx.scan
    self.experts = nnx.Param(  # MoE-style (experts, in, out)
      jax.random.normal(rngs.params(), (4, 8, 6))
    )


def _flat(tree) -> dict:
  return {
    jax.tree_util.keystr(p, simple=True, separator="/"): v
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _params():
  return nnx.state(_Zoo(nnx.Rngs(0)), nnx.Param)


# The layouts a user declares for the zoo (paths end in '/value' in nnx state).
_DECLARED = {
  "attn/query/kernel/value": mo.DimensionNumbers(0, (1, 2)),
  "attn/key/kernel/value": mo.DimensionNumbers(0, (1, 2)),
  "attn/value/kernel/value": mo.DimensionNumbers(0, (1, 2)),
  "attn/out/kernel/value": mo.DimensionNumbers((0, 1), 2),
  "einsum/kernel/value": mo.DimensionNumbers(0, (1, 2)),
  "conv/kernel/value": mo.DimensionNumbers((0, 1, 2), 3),
  "scanned/kernel/value": mo.DimensionNumbers(1, 2),
  "experts/value": mo.DimensionNumbers(1, 2),
  "dense/kernel/value": mo.DimensionNumbers(0, 1),
}


def _declared(path, leaf):
  del leaf
  return _DECLARED.get(path)


def test_undeclared_leaves_with_more_than_two_axes_go_to_adam():
  labels = _flat(mo.default_param_labels(_params()))
  assert {k for k, v in labels.items() if v == "multinorm"} == {
    "dense/kernel/value"
  }, labels
  # Every kernel of attention, einsum, conv, scanned layers and experts is
  # AdamW's: its axes are not the (fan_in, fan_out) of a 2-D kernel.
  assert labels["attn/query/kernel/value"] == "adam"
  assert labels["attn/out/kernel/value"] == "adam"
  assert labels["conv/kernel/value"] == "adam"
  assert labels["scanned/kernel/value"] == "adam"
  assert labels["experts/value"] == "adam"


def test_declared_layouts_are_normalized():
  labels = _flat(mo.default_param_labels(_params(), _declared))
  assert {k for k, v in labels.items() if v == "multinorm"} == set(_DECLARED)


@pytest.mark.parametrize(
  "make", [mo.sinkgd, mo.swan, mo.sinkgd_stateless], ids=lambda f: f.__name__
)
def test_recipes_leave_undeclared_kernels_to_their_elementwise_group(make):
  """An undeclared (in, heads, head_dim) or (h, w, in, out) kernel gets the
  AdamW group's step (sign descent in sinkgd_stateless), never a
  normalization on guessed axes; the 2-D kernel is still normalized."""
  params = _params()
  grads = jax.tree.map(
    lambda p: jax.random.normal(jax.random.key(1), p.shape), params
  )
  tx = make(LR)
  u = _flat(tx.update(grads, tx.init(params), params)[0])
  g = _flat(grads)
  for name in ("attn/query/kernel/value", "conv/kernel/value", "experts/value"):
    # AdamW's first step (no weight decay) and sign descent: -lr * sign(g).
    np.testing.assert_allclose(u[name], -LR * jnp.sign(g[name]), rtol=1e-4)
  rms = float(jnp.sqrt(jnp.mean(u["dense/kernel/value"] ** 2)))
  np.testing.assert_allclose(rms, 0.05 * LR, rtol=1e-4)


def test_sinkgd_normalizes_declared_kernels_on_their_declared_axes():
  params = _params()
  grads = jax.tree.map(
    lambda p: jax.random.normal(jax.random.key(2), p.shape), params
  )
  tx = mo.sinkgd(LR, dimension_numbers=_declared)
  u = _flat(tx.update(grads, tx.init(params), params)[0])
  g = _flat(grads)

  def sinkhorn(matrix):  # a Flax (fan_in, fan_out) matrix
    out, _ = mo.scale_by_sinkgd(5).update({"k": matrix}, None)
    return -0.05 * LR * out["k"]

  q = g["attn/query/kernel/value"]
  chex.assert_trees_all_close(
    u["attn/query/kernel/value"],
    sinkhorn(q.reshape(8, 8)).reshape(q.shape),
    rtol=1e-5,
    atol=1e-9,
  )
  conv = g["conv/kernel/value"]
  chex.assert_trees_all_close(
    u["conv/kernel/value"],
    sinkhorn(conv.reshape(36, 8)).reshape(conv.shape),
    rtol=1e-5,
    atol=1e-9,
  )
  for name in ("scanned/kernel/value", "experts/value"):
    per_matrix = jnp.stack([sinkhorn(x) for x in g[name]])
    chex.assert_trees_all_close(u[name], per_matrix, rtol=1e-5, atol=1e-9)


def test_a_leaf_declared_none_goes_to_adam():
  """A spec that leaves a 2-D leaf unchanged used to label it 'multinorm',
  so the recipe applied its raw gradient; now it is AdamW's."""
  params = {"a": jnp.ones((4, 6)), "b": jnp.ones((4, 6))}
  spec = {"a": mo.DimensionNumbers(0, 1), "b": None}
  assert mo.default_param_labels(params, spec) == {
    "a": "multinorm",
    "b": "adam",
  }
  grads = jax.tree.map(lambda p: 3.0 * p, params)
  tx = mo.sinkgd(LR, dimension_numbers=spec)
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(u["b"], -LR * jnp.ones((4, 6)), rtol=1e-4)


def test_a_declared_layout_that_does_not_fit_names_the_leaf():
  params = {"block": {"kernel": jnp.ones((4, 6))}}
  with pytest.raises(ValueError, match=r"block/kernel.*\(4, 6\)"):
    mo.default_param_labels(params, mo.DimensionNumbers(1, 2))


def test_swan_sends_fan_in_one_kernels_to_adam():
  """Standardizing a row of length 1 gives exactly zero: SWAN would never
  move a (1, fan_out) Flax kernel, so its labels give it AdamW."""
  model = nnx.Linear(1, 8, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  assert _flat(mo.default_param_labels(params))["kernel/value"] == "multinorm"
  swan_labels = mo.default_param_labels(params, min_fan_in=2)
  assert _flat(swan_labels)["kernel/value"] == "adam"
  grads = jax.tree.map(
    lambda p: jax.random.normal(jax.random.key(3), p.shape), params
  )
  tx = mo.swan(LR)
  u = _flat(tx.update(grads, tx.init(params), params)[0])["kernel/value"]
  g = _flat(grads)["kernel/value"]
  np.testing.assert_allclose(u, -LR * jnp.sign(g), rtol=1e-4)
  # A declared (out, in) layout counts its fan_in on the declared axis.
  torch = mo.DimensionNumbers(1, 0)
  assert mo.default_param_labels({"w": jnp.ones((8, 1))}, torch, min_fan_in=2)[
    "w"
  ] == ("adam")


def _llama_hidden(config) -> set:
  """The parameters our LLaMA normalizes (as before the label rule)."""
  layers = (
    ["layers"]
    if config.scan_layers
    else [f"layers/{i}" for i in range(config.n_layers)]
  )
  kernels = [f"attn/{p}_proj" for p in "qkvo"] + [
    f"mlp/{p}_proj" for p in ("gate", "up", "down")
  ]
  return {f"{layer}/{k}/kernel" for layer in layers for k in kernels}


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scan"])
def test_labels_of_our_llama_are_unchanged(scan_layers):
  """Our LLaMA declares its layouts (models.llama.weight_dimension_numbers),
  so its scanned (layers, fan_in, fan_out) kernels stay normalized; every
  recipe's labels are the same as before the rule."""
  config = dataclasses.replace(
    llama.get_config("tiny", n_layers=2), scan_layers=scan_layers
  )
  params = llama.abstract_params(config)
  declared = llama.weight_dimension_numbers
  labels = _flat(mo.default_param_labels(params, declared))
  assert {k for k, v in labels.items() if v == "multinorm"} == _llama_hidden(
    config
  )
  swan_labels = mo.default_param_labels(params, declared, min_fan_in=2)
  assert _flat(swan_labels) == labels
  stateless = _flat(mo.stateless_param_labels(params, declared))
  assert {k for k, v in stateless.items() if v == "multinorm"} == (
    _llama_hidden(config)
  )
  assert stateless["lm_head/kernel"] == "head"
  assert stateless["embed/embedding"] == "embedding"
  if not scan_layers:  # all 2-D: nothing to declare
    assert _flat(mo.default_param_labels(params)) == labels


def test_our_llama_scanned_recipe_is_the_per_layer_recipe():
  """sinkgd with our LLaMA's declaration on the scanned tree: each layer's
  kernel gets exactly the update of the unrolled model's kernel."""
  config = llama.get_config("tiny", n_layers=2)
  shapes = llama.abstract_params(config)
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  grads = treedef.unflatten(
    [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  )
  stack = lambda t: {
    **{k: v for k, v in t.items() if k != "layers"},
    "layers": jax.tree.map(
      lambda *xs: jnp.stack(xs), *[t["layers"][i] for i in range(2)]
    ),
  }
  tx = mo.sinkgd(LR, dimension_numbers=llama.weight_dimension_numbers)
  unrolled, _ = jax.jit(tx.update)(grads, tx.init(grads), grads)
  # Unrolled, every leaf is 2-D: the declaration changes nothing, bit for bit.
  plain = mo.sinkgd(LR)
  chex.assert_trees_all_equal(
    unrolled, jax.jit(plain.update)(grads, plain.init(grads), grads)[0]
  )
  scanned, _ = jax.jit(tx.update)(
    stack(grads), tx.init(stack(grads)), stack(grads)
  )
  chex.assert_trees_all_close(scanned, stack(unrolled), rtol=1e-5, atol=1e-9)
