"""Test session setup: 8 simulated CPU devices, so sharding tests run anywhere.

The device count must be fixed before JAX creates its backend, so it is set here,
at import time of the test session, before any test module touches jax.numpy.
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)
