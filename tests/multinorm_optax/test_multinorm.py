"""MNGD, SinkGD and SWAN transforms: the paper's math, layouts and numerics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import multinorm_optax as mo
from multinorm_optax import DimensionNumbers
from multinorm_optax.normalizers import POLAR_DESIGN, polar_quintic_schedule
from tests import reference

IMPLS = pytest.mark.parametrize("impl", ["fused", "reference"])


def _rand(shape, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _update(tx, grads):
  updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
  return updates


# --- the paper's math, on the paper's layout ---------------------------------


@pytest.mark.parametrize("m,n", [(16, 16), (256, 8), (8, 256), (48, 20)])
@pytest.mark.parametrize("num_iters", [1, 5])
@IMPLS
def test_sinkgd_on_flax_kernel_equals_reference_on_its_transpose(
  impl, m, n, num_iters
):
  g = _rand((m, n), seed=m + n)  # paper layout (fan_out, fan_in)
  kernel_grad = {"kernel": jnp.asarray(g.T)}  # Flax layout (fan_in, fan_out)
  out = _update(mo.scale_by_sinkgd(num_iters, impl=impl), kernel_grad)["kernel"]
  chex.assert_shape(out, (n, m))
  np.testing.assert_allclose(
    np.asarray(out).T, reference.sr_sinkhorn(g, num_iters), rtol=2e-5, atol=2e-5
  )


def test_layout_matters_rows_first_on_the_transpose_is_a_different_update():
  g = _rand((32, 8), seed=3)
  right = reference.sr_sinkhorn(g, 1)
  wrong = reference.sr_sinkhorn(
    g.T, 1
  ).T  # forgetting that Flax kernels are transposed
  assert np.abs(right - wrong).max() > 1e-2
  out = _update(mo.scale_by_sinkgd(1), {"kernel": jnp.asarray(g.T)})["kernel"]
  np.testing.assert_allclose(np.asarray(out).T, right, rtol=2e-5, atol=2e-5)


@IMPLS
def test_pytorch_layout_via_dimension_numbers_equals_reference_directly(impl):
  g = _rand((24, 40), seed=4)  # (out, in) like torch.nn.Linear.weight
  tx = mo.scale_by_sinkgd(
    5,
    dimension_numbers=DimensionNumbers(reduction_axis=1, output_axis=0),
    impl=impl,
  )
  out = _update(tx, {"w": jnp.asarray(g)})["w"]
  np.testing.assert_allclose(
    np.asarray(out), reference.sr_sinkhorn(g, 5), rtol=2e-5, atol=2e-5
  )


# |singular value - 1| each whitening mode may leave on these Gaussian inputs:
# float32 rounding for "exact", its designed band for the default "fast".
SWAN_SV_ATOL = {
  "exact": 5e-3,
  "fast": 2e-3 + polar_quintic_schedule(*POLAR_DESIGN["fast"])[-1][3],
}


@pytest.mark.parametrize("mode", SWAN_SV_ATOL)
@pytest.mark.parametrize("m,n", [(64, 16), (16, 64)])
def test_swan_equals_reference(m, n, mode):
  g = _rand((m, n), seed=7)
  atol = SWAN_SV_ATOL[mode]
  tx = mo.scale_by_swan(whiten_mode=mode)
  out = _update(tx, {"kernel": jnp.asarray(g.T)})["kernel"]
  # The tall case has a null direction (row standardization) whose rounding
  # noise "exact" lifts to ~1e-2 (see whiten's docstring).
  entry_atol = max(atol, 1.2e-2) if mode == "exact" else atol
  np.testing.assert_allclose(
    np.asarray(out).T, reference.swan(g), atol=entry_atol * np.sqrt(max(m, n))
  )
  unscaled = _update(
    mo.scale_by_swan(rescale=False, whiten_mode=mode),
    {"kernel": jnp.asarray(g.T)},
  )["kernel"]
  nonzero = np.linalg.svd(np.asarray(unscaled, np.float64), compute_uv=False)[
    : min(m, n) - (m >= n)
  ]
  np.testing.assert_allclose(nonzero, 1.0, atol=atol)


def test_swan_is_multinorm_of_row_standardize_then_whiten():
  g = {"kernel": jnp.asarray(_rand((40, 24), seed=8))}
  chex.assert_trees_all_close(
    _update(mo.scale_by_swan(rescale=False), g),
    _update(mo.multinorm([mo.row_standardize, mo.whiten], 1), g),
  )


# --- fixed points --------------------------------------------------------------


@IMPLS
def test_after_last_column_step_every_column_norm_is_sqrt_m(impl):
  m, n = 48, 20
  g = _rand((m, n), seed=9)
  out = np.asarray(
    _update(mo.scale_by_sinkgd(5, impl=impl), {"k": jnp.asarray(g.T)})["k"],
    np.float64,
  ).T
  np.testing.assert_allclose(np.linalg.norm(out, axis=0), np.sqrt(m), rtol=1e-6)


def test_row_norms_approach_sqrt_n_and_residual_shrinks_with_num_iters():
  m, n = 48, 20
  g = jnp.asarray(
    _rand((m, n), seed=10) * np.linspace(0.1, 3.0, n, dtype=np.float32)
  )
  pair = [mo.row_l2, mo.col_l2]
  residuals, row_errors = [], []
  for num_iters in (1, 2, 5, 20):
    out = mo.alternate_normalizers(g, pair, num_iters)
    residuals.append(float(mo.fixed_point_residual(pair, out)))
    row_errors.append(
      float(jnp.max(jnp.abs(jnp.linalg.norm(out, axis=1) - np.sqrt(n))))
    )
  assert all(a > b for a, b in zip(residuals, residuals[1:])), residuals
  assert all(a > b for a, b in zip(row_errors, row_errors[1:])), row_errors
  assert residuals[-1] < 1e-3 * residuals[0]


def test_fixed_point_residual_is_zero_on_a_joint_fixed_point_and_positive_elsewhere():
  ones = jnp.ones((6, 10))  # every row has norm sqrt(10), every column sqrt(6)
  assert float(mo.fixed_point_residual([mo.row_l2, mo.col_l2], ones)) < 1e-6
  assert (
    float(
      mo.fixed_point_residual(
        [mo.row_l2, mo.col_l2], jnp.asarray(_rand((6, 10)))
      )
    )
    > 1e-2
  )
  chex.assert_shape(
    mo.fixed_point_residual([mo.row_l2], jnp.ones((3, 6, 10))), (3,)
  )


def test_user_written_normalizer_is_alternated_like_the_builtins():
  def my_col_l2(g):  # a user's own projection, written on one (m, n) matrix
    return g * jnp.sqrt(g.shape[0]) / jnp.linalg.norm(g, axis=0, keepdims=True)

  g = {"k": jnp.asarray(_rand((12, 30), seed=11))}
  chex.assert_trees_all_close(
    _update(mo.multinorm([mo.row_l2, my_col_l2], 3), g),
    _update(mo.scale_by_sinkgd(3), g),
    rtol=1e-5,
  )


# --- numerics --------------------------------------------------------------------


@pytest.mark.parametrize(
  "tx",
  [
    mo.scale_by_sinkgd(5, impl="fused"),
    mo.scale_by_sinkgd(5, impl="reference"),
    mo.scale_by_swan(),
  ],
  ids=["sinkgd-fused", "sinkgd-reference", "swan"],
)
def test_zero_gradient_gives_zero_update(tx):
  zero = {"k": jnp.zeros((16, 8))}
  chex.assert_trees_all_equal(_update(tx, zero), zero)


@IMPLS
def test_zero_rows_and_columns_stay_zero_without_nan_or_blowup(impl):
  g = _rand((20, 12), seed=12)  # Flax (fan_in, fan_out)
  g[3, :] = 0.0
  g[:, 5] = 0.0
  out = np.asarray(
    _update(mo.scale_by_sinkgd(5, impl=impl), {"k": jnp.asarray(g)})["k"]
  )
  chex.assert_tree_all_finite(out)
  assert np.all(out[3, :] == 0.0) and np.all(out[:, 5] == 0.0)
  assert (
    np.abs(out).max() <= np.sqrt(20) + 1e-4
  )  # bounded by a row's target norm
  single = np.zeros((20, 12), np.float32)
  single[2, 7] = (
    1e-3  # one non-zero entry: it becomes a unit-norm scaled value, no Inf
  )
  out = np.asarray(
    _update(mo.scale_by_sinkgd(5, impl=impl), {"k": jnp.asarray(single)})["k"]
  )
  chex.assert_tree_all_finite(out)
  assert np.count_nonzero(out) == 1 and 0 < abs(out[2, 7]) <= np.sqrt(20)


_SWAN_DEFAULT = mo.scale_by_swan()


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30])
@pytest.mark.parametrize(
  "tx",
  [
    mo.scale_by_sinkgd(5, impl="fused"),
    mo.scale_by_sinkgd(5, impl="reference"),
    _SWAN_DEFAULT,
  ],
  ids=["sinkgd-fused", "sinkgd-reference", "swan"],
)
def test_update_is_scale_invariant_over_float32_range(tx, scale):
  g = _rand((24, 40), seed=13)
  base = _update(tx, {"k": jnp.asarray(g)})
  scaled = _update(tx, {"k": jnp.asarray(g * np.float32(scale))})
  chex.assert_tree_all_finite(scaled)
  # SWAN: row standardization leaves this tall matrix (paper view 40 x 24) a
  # null direction (the all-ones one); whitening lifts small singular values
  # toward 1 by design, so it amplifies that direction's float32 rounding
  # noise (from the input's own rounding after scaling) to ~1e-4 of the
  # update's entries (which are ~1). SinkGD has no such direction.
  atol = 5e-4 if tx is _SWAN_DEFAULT else 1e-5
  chex.assert_trees_all_close(scaled, base, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@IMPLS
def test_low_precision_gradients_keep_dtype_and_match_float32_math(impl, dtype):
  g = jnp.asarray(_rand((32, 16), seed=14)).astype(dtype)
  out = _update(mo.scale_by_sinkgd(5, impl=impl), {"k": g})["k"]
  chex.assert_type(out, dtype)
  expected = _update(
    mo.scale_by_sinkgd(5, impl=impl), {"k": g.astype(jnp.float32)}
  )["k"]
  chex.assert_trees_all_close(
    out.astype(jnp.float32), expected, rtol=1e-2, atol=1e-2
  )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@IMPLS
def test_non_finite_gradient_gives_all_nan_update_and_apply_if_finite_skips(
  impl, bad
):
  g = _rand((8, 6), seed=15)
  g[2, 3] = bad
  grads = {"k": jnp.asarray(g), "ok": jnp.asarray(_rand((4, 4)))}
  out = _update(mo.scale_by_sinkgd(5, impl=impl), grads)
  assert np.all(np.isnan(np.asarray(out["k"])))
  chex.assert_tree_all_finite(
    out["ok"]
  )  # one bad matrix does not poison the others

  tx = optax.apply_if_finite(
    optax.chain(mo.scale_by_sinkgd(5, impl=impl), optax.scale(-0.1)), 3
  )
  state = tx.init(grads)
  updates, state = jax.jit(tx.update)(grads, state)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, grads))
  assert int(state.notfinite_count) == 1


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_integer_or_complex_leaf_is_a_clear_error_naming_it(dtype):
  grads = {"layer": {"w": jnp.zeros((4, 4), dtype)}}
  with pytest.raises(ValueError, match=r"layer/w.*dtype"):
    mo.scale_by_sinkgd().init(grads)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 0, 4)])
@IMPLS
def test_zero_size_dimensions_do_not_crash(impl, shape):
  grads = {"k": jnp.zeros(shape)}
  out = _update(mo.scale_by_sinkgd(impl=impl), grads)
  chex.assert_shape(out["k"], shape)


# --- dimension numbers -------------------------------------------------------------


def _sinkgd_kernel(kernel, num_iters=5):
  """SinkGD of one 2-D Flax kernel, through the reference."""
  return reference.sr_sinkhorn(np.asarray(kernel).T, num_iters).T


@IMPLS
def test_stacked_layers_and_moe_experts_normalize_each_matrix_independently(
  impl,
):
  g = _rand((3, 16, 8), seed=16)  # (layers or experts, in, out)
  out = np.asarray(
    _update(mo.scale_by_sinkgd(impl=impl), {"k": jnp.asarray(g)})["k"]
  )
  for i in range(3):
    np.testing.assert_allclose(
      out[i], _sinkgd_kernel(g[i]), rtol=2e-5, atol=2e-5
    )


@IMPLS
def test_attention_kernel_with_two_output_axes_is_one_matrix(impl):
  g = _rand((32, 4, 8), seed=17)  # (d_model, heads, head_dim)
  tx = mo.scale_by_sinkgd(
    dimension_numbers=DimensionNumbers(0, (1, 2)), impl=impl
  )
  out = np.asarray(_update(tx, {"q": jnp.asarray(g)})["q"])
  expected = _sinkgd_kernel(g.reshape(32, 32)).reshape(32, 4, 8)
  np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


@IMPLS
def test_attention_output_kernel_with_two_reduction_axes(impl):
  g = _rand((4, 8, 32), seed=18)  # (heads, head_dim, d_model)
  tx = mo.scale_by_sinkgd(
    dimension_numbers=DimensionNumbers((0, 1), 2), impl=impl
  )
  out = np.asarray(_update(tx, {"o": jnp.asarray(g)})["o"])
  np.testing.assert_allclose(
    out,
    _sinkgd_kernel(g.reshape(32, 32)).reshape(4, 8, 32),
    rtol=2e-5,
    atol=2e-5,
  )


@IMPLS
def test_conv_kernel_is_fan_in_h_w_in_by_fan_out(impl):
  g = _rand((3, 3, 4, 6), seed=19)  # (h, w, in, out)
  tx = mo.scale_by_sinkgd(
    dimension_numbers=DimensionNumbers((0, 1, 2), 3), impl=impl
  )
  out = np.asarray(_update(tx, {"conv": jnp.asarray(g)})["conv"])
  np.testing.assert_allclose(
    out,
    _sinkgd_kernel(g.reshape(36, 6)).reshape(3, 3, 4, 6),
    rtol=2e-5,
    atol=2e-5,
  )


@IMPLS
def test_experts_with_batch_axis_in_the_middle(impl):
  g = _rand((16, 3, 8), seed=20)  # (in, experts, out)
  tx = mo.scale_by_sinkgd(dimension_numbers=DimensionNumbers(0, 2), impl=impl)
  out = np.asarray(_update(tx, {"e": jnp.asarray(g)})["e"])
  for e in range(3):
    np.testing.assert_allclose(
      out[:, e], _sinkgd_kernel(g[:, e]), rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize(
  "dn,match",
  [
    (DimensionNumbers(0, 3), "out of range"),
    (DimensionNumbers(1, 1), "repeated"),
    (DimensionNumbers((), 1), "no reduction axis"),
  ],
)
def test_dimension_numbers_that_do_not_fit_name_the_leaf_path_and_shape(
  dn, match
):
  grads = {"block": {"kernel": jnp.zeros((4, 6))}}
  with pytest.raises(ValueError, match=rf"block/kernel.*\(4, 6\).*{match}"):
    mo.scale_by_sinkgd(dimension_numbers=dn).init(grads)


def test_vector_leaf_under_default_spec_is_an_error_unless_skipped():
  grads = {"dense": {"kernel": jnp.ones((4, 6)), "bias": jnp.ones((6,))}}
  with pytest.raises(ValueError, match=r"dense/bias.*\(6,\).*not a matrix"):
    mo.scale_by_sinkgd().init(grads)
  skip_vectors = lambda path, leaf: (
    DimensionNumbers(0, 1) if leaf.ndim == 2 else None
  )
  out = _update(mo.scale_by_sinkgd(dimension_numbers=skip_vectors), grads)
  chex.assert_trees_all_equal(out["dense"]["bias"], grads["dense"]["bias"])
  tree_spec = {"dense": {"kernel": DimensionNumbers(0, 1), "bias": None}}
  chex.assert_trees_all_close(
    _update(mo.scale_by_sinkgd(dimension_numbers=tree_spec), grads), out
  )


@pytest.mark.parametrize(
  "shape,dn",
  [
    ((64, 48), None),
    ((3, 40, 24), None),
    ((16, 4, 8), DimensionNumbers(0, (1, 2))),
  ],
)
@pytest.mark.parametrize("num_iters", [1, 5])
def test_fused_sinkhorn_equals_materialized_normalizations(
  shape, dn, num_iters
):
  g = {
    "k": jnp.asarray(
      _rand(shape, seed=21)
      * np.linspace(0.01, 5.0, shape[-1], dtype=np.float32)
    )
  }
  fused = _update(
    mo.scale_by_sinkgd(num_iters, dimension_numbers=dn, impl="fused"), g
  )
  materialized = _update(
    mo.scale_by_sinkgd(num_iters, dimension_numbers=dn, impl="reference"), g
  )
  chex.assert_trees_all_close(fused, materialized, rtol=1e-5, atol=1e-6)


def test_unknown_impl_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown impl 'pallas'"):
    mo.scale_by_sinkgd(impl="pallas")
