"""Each normalizer against its definition, on random float64-checked inputs."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import multinorm_optax as mo
from multinorm_optax.normalizers import POLAR_DESIGN, polar_quintic_schedule
from tests import reference


def _rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (5, 5)])
def test_row_l2_sets_every_row_norm_to_sqrt_n(shape):
  out = np.asarray(mo.row_l2(jnp.asarray(_rand(shape))), np.float64)
  np.testing.assert_allclose(
    np.linalg.norm(out, axis=1), np.sqrt(shape[1]), rtol=1e-6
  )


@pytest.mark.parametrize("shape", [(8, 32), (32, 8)])
def test_col_l2_sets_every_column_norm_to_sqrt_m(shape):
  out = np.asarray(mo.col_l2(jnp.asarray(_rand(shape))), np.float64)
  np.testing.assert_allclose(
    np.linalg.norm(out, axis=0), np.sqrt(shape[0]), rtol=1e-6
  )


def test_row_standardize_gives_zero_mean_unit_std_rows():
  g = _rand((16, 64)) * 3.0 + 5.0
  out = np.asarray(mo.row_standardize(jnp.asarray(g)), np.float64)
  np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-6)
  np.testing.assert_allclose(out.std(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out, reference.grad_norm(g), rtol=1e-5, atol=1e-5)


# The largest |singular value - 1| each mode leaves on these well-conditioned
# Gaussian inputs: float32 rounding for "exact", the designed band for "fast"
# (their normalized singular values lie inside its design interval).
WHITEN_ATOL = {
  "exact": 2e-3,
  "fast": 2e-3 + polar_quintic_schedule(*POLAR_DESIGN["fast"])[-1][3],
}


@pytest.mark.parametrize("mode", WHITEN_ATOL)
@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (24, 40)])
def test_whiten_gives_unit_singular_values_and_matches_polar_factor(
  shape, mode
):
  g = _rand(shape, seed=1)
  out = np.asarray(mo.whiten(jnp.asarray(g), mode=mode), np.float64)
  atol = WHITEN_ATOL[mode]
  np.testing.assert_allclose(
    np.linalg.svd(out, compute_uv=False), 1.0, atol=atol
  )
  np.testing.assert_allclose(out, reference.grad_whitening(g), atol=atol)


@pytest.mark.parametrize("mode", WHITEN_ATOL)
def test_whiten_after_grad_norm_matches_reference_on_rank_deficient_tall_matrix(
  mode,
):
  # Zero-mean rows of a tall matrix have rank n - 1: the null direction must stay null.
  g = reference.grad_norm(_rand((64, 16), seed=2)).astype(np.float32)
  out = np.asarray(mo.whiten(jnp.asarray(g), mode=mode), np.float64)
  # "exact" lifts the rounding noise of the null direction too (up to ~1e-2,
  # see whiten's docstring); "fast" lifts it less.
  atol = {"exact": 1.2e-2, "fast": WHITEN_ATOL["fast"] + 3e-3}[mode]
  np.testing.assert_allclose(out, reference.grad_whitening(g), atol=atol)


def test_rms_sets_frobenius_norm_to_sqrt_mn():
  out = np.asarray(mo.rms(jnp.asarray(_rand((8, 32)))), np.float64)
  np.testing.assert_allclose(np.linalg.norm(out), np.sqrt(8 * 32), rtol=1e-6)


def test_sign_is_elementwise_sign():
  g = _rand((4, 6))
  np.testing.assert_array_equal(np.asarray(mo.sign(jnp.asarray(g))), np.sign(g))


@pytest.mark.parametrize(
  "normalize",
  [mo.row_l2, mo.col_l2, mo.row_standardize, mo.whiten, mo.rms, mo.sign],
)
def test_normalizers_keep_zero_and_handle_batch_axes(normalize):
  zero = jnp.zeros((2, 4, 6))
  chex.assert_trees_all_equal(normalize(zero), zero)
  g = jnp.asarray(_rand((3, 4, 6)))
  batched = normalize(g)
  chex.assert_trees_all_close(batched[1], normalize(g[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "normalize", [mo.row_l2, mo.col_l2, mo.row_standardize, mo.rms]
)
def test_normalizers_compute_in_float32_and_keep_bf16_dtype(normalize):
  g = jnp.asarray(_rand((16, 32))).astype(jnp.bfloat16)
  out = normalize(g)
  chex.assert_type(out, jnp.bfloat16)
  expected = normalize(g.astype(jnp.float32))
  chex.assert_trees_all_close(
    out.astype(jnp.float32), expected, rtol=1e-2, atol=1e-2
  )
