"""Test session setup: 8 simulated CPU devices, so sharding tests run anywhere.

The device count must be fixed before JAX creates its backend, so it is set here,
at import time of the test session, before any test module touches jax.numpy.
"""

import os
import tempfile

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

jax.config.update("jax_num_cpu_devices", 8)
