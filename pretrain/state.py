"""The train state, its shardings, and how it is made at step 0 or from shapes.

A train state is a plain dict (what orbax checkpoints, key for key):

    params:    the model's parameters, a pure dict of arrays (nnx.to_pure_dict)
    opt_state: the optax state, sharded like the params it copies
    step:      int32, the number of updates applied
    rng:       the run's base PRNG key data (anything random folds in the step)
"""

from __future__ import annotations

from typing import Any, TypedDict

import jax
import jax.numpy as jnp
from flax import nnx

from models.llama import abstract_params
from pretrain import mesh as meshlib


class TrainState(TypedDict):
  """The train state's keys (a dict, so checkpoints keep their tree)."""

  params: dict
  opt_state: Any
  step: jax.Array
  rng: jax.Array


def state_shardings(params, tx, mesh) -> dict:
  """Shardings of the train state {params, opt_state, step, rng}: optimizer
  state sharded like the params it copies, the rest replicated. `params` may
  be concrete or `abstract_params(config, mesh)`."""
  replicated = meshlib.replicated(mesh)
  return {
    "params": jax.tree.map(lambda x: x.sharding, params),
    "opt_state": meshlib.shardings_like_params(
      jax.eval_shape(tx.init, params), params, replicated
    ),
    "step": replicated,
    "rng": replicated,
  }


def abstract_train_state(config, tx, mesh) -> tuple[dict, dict]:
  """(state, shardings) as `jax.ShapeDtypeStruct`s carrying their shardings:
  what `init_state` makes, with nothing allocated (for `jit(...).lower`)."""
  params = abstract_params(config, mesh)
  shardings = state_shardings(params, tx, mesh)
  shapes = {
    "params": params,
    "opt_state": jax.eval_shape(tx.init, params),
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
  }
  state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    shapes,
    shardings,
  )
  return state, shardings


def init_state(model, tx, mesh, seed: int):
  """(state, shardings) at step 0: the model's sharded params, optimizer state sharded
  like them, and the run's base PRNG key (the model has no dropout yet; anything
  random should fold in the step, so a resumed run draws the same numbers)."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  replicated = meshlib.replicated(mesh)
  shardings = state_shardings(params, tx, mesh)
  opt_shardings = shardings["opt_state"]
  state = {
    "params": params,
    "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
    "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
    "rng": jax.device_put(
      jax.random.key_data(jax.random.key(seed)), replicated
    ),
  }
  return state, shardings


@jax.jit
def all_finite(tree) -> jax.Array:
  """Whether every array of `tree` is finite (one device-side reduction)."""
  return jnp.all(
    jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])
  )
