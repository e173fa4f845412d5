"""Test session setup: 8 simulated CPU devices, so sharding tests run anywhere.

The device count must be fixed before JAX creates its backend, so it is set here,
at import time of the test session, before any test module touches jax.numpy.
Also the fixtures that tests of more than one package share.
"""

import os
import tempfile

import pytest

# One persistent compilation cache for the whole session, its xdist workers and
# the train.py subprocesses the tests start (they inherit the environment):
# most tests compile the same few tiny steps, and a cached executable is the
# very binary a fresh compile gives, so results are bit for bit the same. Set
# before jax is imported, which reads these at import.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), "multinorm-optax-tests-jax-cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax
import jax.numpy as jnp

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def next_token_losses():
  """`losses(model, tx, tokens, steps)`: trains the flax `model` in place with
  `nnx.Optimizer(model, tx)` for `steps` steps on one batch of `tokens`
  (batch, T + 1), each predicting the next token by mean cross entropy;
  returns the loss of every step."""
  from flax import nnx

  def losses(model, tx, tokens, steps):
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss_fn(model):
      logits = model(inputs)
      one_hot = jax.nn.one_hot(targets, logits.shape[-1])
      return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1))

    @nnx.jit
    def train_step(model, optimizer):
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return [float(train_step(model, optimizer)) for _ in range(steps)]

  return losses
