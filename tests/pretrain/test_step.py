"""The train step: gradient accumulation equals one pass over the whole batch."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from models import llama
from pretrain import mesh as meshlib
from pretrain.config import TrainConfig
from pretrain.optim import make_optimizer
from pretrain.runtime import model_config
from pretrain.state import init_state
from pretrain.step import cross_entropy, loss_and_grads, make_train_step
from tests.pretrain.runs import assert_trees_close


def _train_steps(config, steps, grad_accum):
  """Losses and final params of `steps` train steps of `config` on 2 devices."""
  cfg = model_config(config)
  mesh = meshlib.make_mesh(
    {"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2]
  )
  model = llama.create_sharded_model(cfg, mesh, seed=0)
  graphdef = nnx.graphdef(model)
  tx, _ = make_optimizer(config)
  state, shardings = init_state(model, tx, mesh, 0)
  step = make_train_step(
    graphdef,
    tx,
    shardings,
    meshlib.batch_sharding(mesh),
    grad_clip=config.grad_clip,
    grad_accum=grad_accum,
  )
  tokens = np.random.default_rng(0).integers(0, 256, (steps, 8, 17))
  losses = []
  with jax.set_mesh(mesh):
    for batch in tokens:
      state, out = step(state, batch[:, :-1], batch[:, 1:])
      losses.append(float(out["loss"]))
  return np.array(losses), state["params"]


def test_grad_accum_gives_the_gradient_of_the_whole_batch():
  """loss_and_grads over K = 4 microbatches of 2 sequences equals one pass
  over the batch of 8, up to float32 rounding."""
  config = llama.get_config("tiny", dtype=np.float32)
  model = llama.Llama(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  tokens = np.random.default_rng(0).integers(0, 256, (8, 17))

  def loss_fn(params, inputs, targets):
    return cross_entropy(nnx.merge(graphdef, params)(inputs), targets)

  args = (loss_fn, params, tokens[:, :-1], tokens[:, 1:])
  whole_loss, whole = jax.jit(loss_and_grads, static_argnums=(0, 4))(*args, 1)
  accum_loss, accum = jax.jit(loss_and_grads, static_argnums=(0, 4))(*args, 4)
  assert abs(accum_loss - whole_loss) <= 1e-5 * whole_loss
  assert_trees_close(accum, whole, 1e-5)


def test_grad_accum_gives_the_update_of_the_whole_batch():
  """3 train steps on 2 devices, batch 8 as K = 4 microbatches: the same losses
  and parameters as K = 1, up to float32 rounding. SGD, so that the check is
  of the accumulation alone: Adam's first steps divide by |g| + eps and blow
  up the rounding of near-zero gradient entries (SinkGD's embedding group
  differs by ~2e-5 there, at equal gradients to 1e-5)."""
  config = TrainConfig(optimizer="sgd", lr=1.0, steps=3, warmup=1)
  whole_losses, whole = _train_steps(config, 3, grad_accum=1)
  accum_losses, accum = _train_steps(config, 3, grad_accum=4)
  np.testing.assert_allclose(accum_losses, whole_losses, rtol=1e-5)
  assert_trees_close(accum, whole, 1e-5)
  assert whole_losses[-1] < whole_losses[0] - 0.01  # the steps did something
