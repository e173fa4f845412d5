r"""SR-Sinkhorn computed through its scaling vectors: same result, fewer memory passes.

Every iterate of SR-Sinkhorn is the gradient with its rows and columns
rescaled, ``G_t = diag(r_t) G diag(c_t)``, so the ``2L`` normalizations only
need the two vectors. With ``S = G * G`` (elementwise, never materialized):

.. math::
   r_t = \sqrt{n} / \sqrt{S\, c_{t-1}^2}, \qquad
   c_t = \sqrt{m} / \sqrt{S^\top r_t^2}, \qquad c_0 = 1,

(the previous ``r`` cancels in the row step: a row's new norm does not depend
on its old scale), and the update is written once, ``G_L = r_L G c_L^T``.
Each half-step is one read of ``G`` fused with a reduction, and the last
scaling fuses into whatever consumes the update (``optax.apply_updates``):
``2L + 1`` reads of G plus one read-modify-write of the parameters, against
about ``4L`` reads and ``2L`` writes when each normalization is materialized.

It works on the parameter's own layout: rows are indexed by the output axes,
columns by the reduction axes, and any other axes are batch axes, so no
transpose or reshape is ever needed and a sharded matrix only exchanges the
``r`` and ``c`` vectors (all-reduces of partial sums).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from multinorm_optax.layout import CanonicalLayout
from multinorm_optax.normalizers import repeat, safe_ratio, sqrt0, to_unit_max


def sinkhorn_scaled(
  g: jax.Array, layout: CanonicalLayout, num_iters
) -> jax.Array:
  """``G_L`` of SR-Sinkhorn for one leaf, in the leaf's layout and dtype.

  Equal (up to float32 rounding) to :func:`multinorm_optax.alternate_normalizers`
  with ``[row_l2, col_l2]``, including its float32 math, its scale invariance
  (``G`` is divided by a power of two near ``max |G|`` inside each read, see
  :func:`~multinorm_optax.normalizers.to_unit_max`), zero rows and columns
  staying zero, and its NaN policy (a non-finite entry, or a traced
  ``num_iters`` below 1, makes the matrix NaN).
  """
  if g.size == 0:
    return g
  rows_of = (
    layout.reduction_axes
  )  # reducing over fan_in gives one value per row
  cols_of = layout.output_axes
  matrix_axes = rows_of + cols_of
  f32 = jnp.promote_types(g.dtype, jnp.float32)
  amax = jnp.max(jnp.abs(g), axis=matrix_axes, keepdims=True).astype(f32)
  sqrt_n = jnp.sqrt(jnp.asarray(layout.n, f32))
  sqrt_m = jnp.sqrt(jnp.asarray(layout.m, f32))

  def sum_of_squares(scale, axes):
    # The scale is applied before squaring and differs in every half-step, so
    # XLA cannot merge the reads into one shared (and materialized) G * G.
    x = to_unit_max(g.astype(f32), amax) * scale
    return jnp.sum(x * x, axis=axes, keepdims=True)

  def one_round(_, c):
    r = safe_ratio(sqrt_n, sqrt0(sum_of_squares(c, rows_of)))
    c = safe_ratio(sqrt_m, sqrt0(sum_of_squares(r, cols_of)))
    return r, c

  r = jnp.ones([1 if a in rows_of else d for a, d in enumerate(g.shape)], f32)
  c = jnp.ones([1 if a in cols_of else d for a, d in enumerate(g.shape)], f32)
  r, c = repeat(lambda i, rc: one_round(i, rc[1]), num_iters, (r, c))
  out = to_unit_max(g.astype(f32), amax) * r * c
  out = jnp.where(jnp.isfinite(amax) & (num_iters >= 1), out, jnp.nan)
  return out.astype(g.dtype)
