"""One training step and one evaluation step, as pure functions and jitted.

    loss = mean token cross entropy of the LLaMA's logits (float32)
    (loss, grad) = mean over K microbatches (--grad-accum), summed in float32
    grad <- grad * min(1, clip / (|grad| + 1e-6))        (--grad-clip)
    params <- params + tx.update(grad, opt_state, params)

The train state is `pretrain.state.TrainState`: {params, opt_state, step, rng}.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models.llama import abstract_model
from pretrain import mesh as meshlib
from pretrain.state import abstract_train_state


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean token cross entropy in float32, as sum(one_hot * log_softmax).

  (optax's integer-label version gathers along the vocab axis, which fails when the
  vocab is sharded over 'tensor'.)
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  return -jnp.mean(jnp.sum(onehot * logp, axis=-1))


def microbatches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B/k, ...], microbatch j holding rows j, k + j, 2k + j, ...

  Strided rather than contiguous: a device that holds a contiguous block of
  the batch (split over data x fsdp) then holds its share of every
  microbatch, so no microbatch moves between devices.
  """
  x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def loss_and_grads(loss_fn, params, inputs, targets, grad_accum: int):
  """(mean loss, mean gradient) of `loss_fn(params, inputs, targets)` over the
  batch, computed on `grad_accum` equal microbatches in a `lax.scan`:

      loss = (1/K) sum_j loss_j,   grad = (1/K) sum_j grad_j,

  summed in float32. Equal to one pass over the whole batch (the loss is a
  mean over equal-size microbatches) up to float rounding, with the
  activations of one microbatch alive at a time.
  """
  grad_fn = jax.value_and_grad(loss_fn)
  if grad_accum == 1:
    return grad_fn(params, inputs, targets)

  def accumulate(carry, batch):
    loss, grads = grad_fn(params, *batch)
    total_loss, total = carry
    total = jax.tree.map(lambda t, g: t + g.astype(jnp.float32), total, grads)
    return (total_loss + loss.astype(jnp.float32), total), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  batches = (
    microbatches(inputs, grad_accum),
    microbatches(targets, grad_accum),
  )
  (loss, grads), _ = jax.lax.scan(
    accumulate, (jnp.zeros((), jnp.float32), zeros), batches
  )
  grads = jax.tree.map(
    lambda g, p: (g / grad_accum).astype(p.dtype), grads, params
  )
  return loss / grad_accum, grads


def train_step(
  state: dict,
  inputs,
  targets,
  *,
  graphdef,
  tx,
  grad_clip: float,
  grad_accum: int = 1,
  nan_step: int | None = None,
):
  """One update of `state` = {params (a pure dict), opt_state, step, rng}
  from the batch (inputs, targets), in `grad_accum` microbatches.

  Returns the new state and {loss, grad_norm} of this step (the norm before clipping).
  """

  def loss_fn(params, inputs, targets):
    loss = cross_entropy(nnx.merge(graphdef, params)(inputs), targets)
    if nan_step is not None:
      # Step s is the s-th update, the one from a state of s - 1 updates.
      loss = jnp.where(state["step"] + 1 == nan_step, jnp.nan, loss)
    return loss

  loss, grads = loss_and_grads(
    loss_fn, state["params"], inputs, targets, grad_accum
  )
  grad_norm = jnp.sqrt(
    sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
  )
  if grad_clip:
    grads = jax.tree.map(
      lambda g: g * jnp.minimum(1.0, grad_clip / (grad_norm + 1e-6)), grads
    )
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = dict(
    state, params=params, opt_state=opt_state, step=state["step"] + 1
  )
  return new_state, {"loss": loss, "grad_norm": grad_norm}


def make_train_step(
  graphdef,
  tx,
  state_shardings,
  batch_sharding,
  *,
  grad_clip: float,
  grad_accum: int = 1,
  nan_step: int | None = None,
):
  """`train_step`, jitted: the state is donated and stays on `state_shardings`."""
  step = functools.partial(
    train_step,
    graphdef=graphdef,
    tx=tx,
    grad_clip=grad_clip,
    grad_accum=grad_accum,
    nan_step=nan_step,
  )
  return jax.jit(
    step,
    in_shardings=(state_shardings, batch_sharding, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )


def train_step_for(config, graphdef, tx, state_shardings, mesh):
  """`make_train_step` as `config` sets it (clipping, microbatches, an
  injected NaN), its batches split over `mesh`: the one step that
  `pretrain.trainer.train` runs and benchmarks time."""
  return make_train_step(
    graphdef,
    tx,
    state_shardings,
    meshlib.batch_sharding(mesh),
    grad_clip=config.grad_clip,
    grad_accum=config.grad_accum,
    nan_step=config.inject_nan_at,
  )


def jitted_train_step(config, model_config, mesh, tx):
  """(the jitted step that `pretrain.trainer.train` runs for `config` on
  `mesh`, the abstract train state it takes): what benchmarks lower, compile
  and time, built from shapes."""
  state, shardings = abstract_train_state(model_config, tx, mesh)
  graphdef = nnx.graphdef(abstract_model(model_config))
  return train_step_for(config, graphdef, tx, shardings, mesh), state


def make_eval_step(graphdef, params_shardings, batch_sharding):
  """Jitted (params, inputs, targets) -> mean token cross entropy."""

  def eval_step(params, inputs, targets):
    return cross_entropy(nnx.merge(graphdef, params)(inputs), targets)

  return jax.jit(
    eval_step, in_shardings=(params_shardings, batch_sharding, batch_sharding)
  )


def evaluate(eval_step, params, batches) -> float:
  """Mean validation loss over `batches`, a list of equal-size (inputs, targets)."""
  return sum(float(eval_step(params, x, y)) for x, y in batches) / len(batches)
