"""The optimizer registry: every optimizer builds on the model, splits its
groups and shards its state like the params.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import multinorm_optax as mo
from models import llama
from models.llama import abstract_params
from pretrain import mesh as meshlib
from pretrain.cli import parse_args
from pretrain.config import OPTIMIZERS, TrainConfig
from pretrain.optim import build_optimizer, make_optimizer, make_schedule
from pretrain.runtime import build_mesh, model_config
from pretrain.state import state_shardings
from pretrain.tokenizer import load_tokenizer
from tests.pretrain.runs import assert_trees_close


@pytest.fixture(scope="module")
def sharded_tiny():
  """The tiny model's params as shape/sharding stand-ins on a 4 x 2 fsdp/tensor mesh."""
  args = parse_args(["--mesh", "fsdp=4,tensor=2"])
  config = model_config(args, load_tokenizer(None))
  mesh = build_mesh(args, config)
  return abstract_params(config, mesh), mesh


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_shards_its_state_like_the_params(
  name, sharded_tiny
):
  params, mesh = sharded_tiny
  args = parse_args(["--optimizer", name])
  tx = build_optimizer(args, make_schedule(0.01, 10))
  # Traced, not compiled: every optimizer accepts the model's tree.
  opt_state = jax.eval_shape(tx.init, params)
  jax.eval_shape(tx.update, params, opt_state, params)
  # Adam moments and momenta are split like their parameter.
  shardings = meshlib.shardings_like_params(
    opt_state, params, meshlib.replicated(mesh)
  )
  q = ("layers", 0, "attn", "q_proj", "kernel")
  spec = params["layers"][0]["attn"]["q_proj"]["kernel"].sharding.spec
  assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  copies = []
  for (path, leaf), sharding in zip(
    jax.tree_util.tree_leaves_with_path(opt_state), jax.tree.leaves(shardings)
  ):
    keys = tuple(
      getattr(k, "key", getattr(k, "idx", getattr(k, "name", None)))
      for k in path
    )
    if keys[-len(q) :] == q and leaf.shape == (128, 128):
      copies.append(keys)
      assert sharding.spec == spec, keys
  # sinkgd, swan and sgd keep no state for hidden matrices; adafactor factors it.
  assert len(copies) == {"adamw": 2, "muon": 1}.get(name, 0), copies


def _three_adamw_steps(tx, params, grads):
  state = tx.init(params)
  for g in grads:  # step 0 has lr 0 (warmup), so take three
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _leaf(tree, path):
  return functools.reduce(lambda t, k: t[k], path, tree)


def test_adamw_with_adam_lr_steps_matrices_at_lr_and_the_rest_at_adam_lr():
  params = nnx.to_pure_dict(
    nnx.state(
      llama.Llama(llama.get_config("tiny"), rngs=nnx.Rngs(0)), nnx.Param
    )
  )
  leaves, treedef = jax.tree.flatten(params)
  grads = []
  for i in range(3):
    keys = jax.random.split(jax.random.key(i), len(leaves))
    grads.append(
      treedef.unflatten(
        [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
      )
    )
  flags = ["--optimizer", "adamw", "--lr", "1e-3", "--steps", "10"]
  matrix = ("layers", 0, "mlp", "up_proj", "kernel")
  for extra, lrs in (
    (["--adam-lr", "3e-2"], {"matrix": 1e-3, "rest": 3e-2}),
    ([], {"matrix": 1e-3, "rest": 1e-3}),  # without --adam-lr: one group
  ):
    args = parse_args(flags + extra)
    tx = build_optimizer(args, make_schedule(1e-3, 10))
    stepped = _three_adamw_steps(tx, params, grads)
    for path, lr in (
      (matrix, lrs["matrix"]),
      (("embed", "embedding"), lrs["rest"]),
      (("layers", 0, "attn_norm", "scale"), lrs["rest"]),
    ):
      ref = _three_adamw_steps(
        optax.adamw(make_schedule(lr, 10), weight_decay=0.0),
        _leaf(params, path),
        [_leaf(g, path) for g in grads],
      )
      np.testing.assert_allclose(
        _leaf(stepped, path), ref, rtol=1e-6, atol=1e-7
      )
      assert not np.allclose(ref, _leaf(params, path), atol=1e-5)


@pytest.mark.parametrize(
  "name", ["sinkgd", "swan", "muon", "adamw", "sinkgd_stateless"]
)
def test_update_of_stacked_layers_is_the_per_layer_update(name):
  """With --scan-layers a kernel is (layers, fan_in, fan_out): the optimizer
  treats the layer axis as a batch axis, so its update is the stack of the
  updates of the unrolled model's per-layer kernels."""
  n = 2
  config = llama.get_config("tiny", n_layers=n)
  unrolled = llama.abstract_params(config)
  leaves, treedef = jax.tree.flatten(unrolled)
  keys = jax.random.split(jax.random.key(0), 2 * len(leaves))
  params, grads = (
    treedef.unflatten(
      [
        scale * jax.random.normal(k, x.shape)
        for k, x in zip(keys[i::2], leaves)
      ]
    )
    for i, scale in ((0, 0.02), (1, 1.0))
  )

  def stack(tree):
    return {
      **{k: v for k, v in tree.items() if k != "layers"},
      "layers": jax.tree.map(
        lambda *xs: jnp.stack(xs), *[tree["layers"][i] for i in range(n)]
      ),
    }

  tx, _ = make_optimizer(TrainConfig(optimizer=name, steps=10, warmup=1))

  def two_updates(params, grads):
    state = tx.init(params)
    for _ in range(2):  # the first has lr 0 (warmup)
      updates, state = tx.update(grads, state, params)
    return updates

  per_layer = jax.jit(two_updates)(params, grads)
  stacked = jax.jit(two_updates)(stack(params), stack(grads))
  assert stacked["layers"]["mlp"]["up_proj"]["kernel"].shape == (n, 128, 352)
  assert_trees_close(stacked, stack(per_layer), 1e-5)


@pytest.mark.parametrize("name", ["sinkgd", "swan", "sinkgd_stateless"])
def test_update_scale_flag_scales_the_hidden_matrices_by_their_shape(name):
  params = llama.abstract_params(llama.get_config("tiny", n_layers=1))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  grads = treedef.unflatten(
    [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  )

  def second_update(rule):  # the first has lr 0 (warmup)
    args = parse_args(
      ["--optimizer", name, "--update-scale", rule, "--steps", "10"]
    )
    tx, _ = make_optimizer(args)
    state = tx.init(grads)
    for _ in range(2):
      updates, state = tx.update(grads, state, grads)
    return updates

  rms, spectral = second_update("rms"), second_update("spectral")
  labels = jax.tree.leaves(mo.default_param_labels(params))
  for path, u, u_rms, label in zip(
    jax.tree_util.tree_leaves_with_path(spectral),
    jax.tree.leaves(spectral),
    jax.tree.leaves(rms),
    labels,
  ):
    if label == "multinorm":  # Flax (fan_in, fan_out)
      factor = mo.update_scale_factor("spectral", u.shape[1], u.shape[0])
      np.testing.assert_allclose(u, factor * u_rms, rtol=1e-5, atol=1e-12)
    else:
      np.testing.assert_array_equal(u, u_rms, err_msg=str(path[0]))


@pytest.mark.parametrize(
  "flags",
  [[], ["--adam-lr", "0.001"], ["--decay-embeddings"]],
  ids=["adamw", "adamw-two-groups", "decay-embeddings"],
)
def test_adamw_weight_decay_spares_norm_scales_and_embeddings(flags):
  # Zero gradients: AdamW's update is -lr * wd * p where decay applies, else 0.
  # No warmup, so that the first step's lr is not 0 in either group.
  args = parse_args(
    ["--optimizer", "adamw", "--weight-decay", "0.5", "--warmup", "0"] + flags
  )
  tx = build_optimizer(args, optax.constant_schedule(0.1))
  model = llama.Llama(llama.get_config("tiny"), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  grads = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = {
    jax.tree_util.keystr(p, simple=True, separator="/"): bool(np.any(u != 0))
    for p, u in jax.tree_util.tree_leaves_with_path(updates)
  }
  decay_embeddings = "--decay-embeddings" in flags
  for name, was_moved in moved.items():
    decayed = "kernel" in name or (decay_embeddings and "embed" in name)
    assert was_moved == decayed, name
  assert moved["embed/embedding"] == decay_embeddings
  assert moved["lm_head/kernel"] and not moved["norm/scale"]


def test_sinkgd_warm_state_is_sharded_like_its_parameter_on_fan_in(
  sharded_tiny,
):
  params, mesh = sharded_tiny
  config = parse_args(["--warm-start", "--momentum", "0.9"])
  tx, _ = make_optimizer(config)
  shardings = state_shardings(params, tx, mesh)["opt_state"]
  state = jax.eval_shape(tx.init, params)
  kernel = ("layers", 0, "mlp", "up_proj", "kernel")
  spec = _leaf(params, kernel).sharding.spec
  found = {}
  for (path, leaf), sharding in zip(
    jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(shardings)
  ):
    keys = tuple(
      getattr(k, "key", getattr(k, "idx", getattr(k, "name", None)))
      for k in path
    )
    if keys[-len(kernel) :] == kernel:
      found[leaf.shape] = sharding.spec
  # The momentum buffer like the kernel, the column scaling (fan_in, 1) like
  # the kernel's fan_in axis.
  fan_in, fan_out = _leaf(params, kernel).shape
  assert found == {
    (fan_in, fan_out): spec,
    (fan_in, 1): P(spec[0], None),
  }, found
