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

Two options make a step cheaper without moving the fixed point:

- a warm start: ``c_0`` is the previous step's ``c_L`` (kept as optimizer
  state, ``n`` floats per matrix) instead of ones, so that a few rounds per
  step, even one, keep tracking the fixed point as the gradient drifts;
- ``overflow_guard="on_demand"``: the sums of squares are taken on ``G``
  itself, without the pass that reads ``max |G|``; only when some sum is not
  finite or too small to be accurate is the step redone on ``G / max |G|``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from multinorm_optax import _sharding
from multinorm_optax.layout import CanonicalLayout
from multinorm_optax.normalizers import repeat, safe_ratio, sqrt0, to_unit_max

OVERFLOW_GUARDS = ("max_abs", "on_demand")
# The smallest sum of squares the on_demand path accepts from unscaled G.
# Squares below 2^-126 may be flushed to zero; each lost square is below
# 2^-126, so an accepted sum of n < 2^24 of them is off by less than
# n * 2^-126 / 2^-80 < 2^-22 of itself: float32 rounding.
MIN_UNSCALED_SUM = 2.0**-80


# XLA:CPU reduces an axis other than the minor one an output element at a
# time, striding through memory by a whole row for every term: with rows of
# LONG_ROW elements or more that runs 10-30x slower than a reduction over the
# minor axis (a (512, 32000) LM head's step: 5.8x AdamW's against 0.86x for
# its transpose, docs/BENCHMARKS.md "SR-Sinkhorn and orientation"). There the sum is
# taken row by row instead (sum_of_squares_by_rows), on CPU only: GPU and
# TPU reduce either axis at full bandwidth.
LONG_ROW = 4096
# The reduced axis is cut into ROW_BLOCKS blocks (or the largest power of two
# dividing it) that are summed side by side: under FSDP the blocks are the
# shards, so the loop only walks each device's own rows, never gathering.
ROW_BLOCKS = 16


def sum_of_squares(y_of, operands, axes) -> jax.Array:
  r"""``sum(y * y, axes, keepdims=True)`` with ``y = y_of(*operands)``.

  .. math:: s = \textstyle\sum_{i \in axes} y_i^2

  ``operands`` broadcast to the first (the gradient), elementwise in
  ``y_of``. When the minor axis is kept and long (``LONG_ROW``), on CPU, the
  sum runs over rows (:func:`sum_of_squares_by_rows`): the same sum in
  another order, equal up to float32 rounding.
  """

  def reduce(*ops):
    y = y_of(*ops)
    return jnp.sum(y * y, axis=axes, keepdims=True)

  x = operands[0]
  if x.ndim - 1 in axes or x.shape[-1] < LONG_ROW:
    return reduce(*operands)
  return jax.lax.platform_dependent(
    *operands,
    cpu=lambda *ops: sum_of_squares_by_rows(y_of, ops, axes),
    default=reduce,
  )


def sum_of_squares_by_rows(y_of, operands, axes) -> jax.Array:
  """:func:`sum_of_squares` as a loop whose every step adds whole rows.

  The first reduced axis ``a`` (length ``n``) is split into ``b`` blocks of
  ``n / b`` rows (``b``: ``ROW_BLOCKS`` or the largest power of two dividing
  ``n``); step ``j`` adds row ``j`` of every block into a ``b``-row
  accumulator, contiguous reads only, and the ``b`` partial sums are added
  by halving. Any other reduced axis is summed inside the step.
  """
  x = operands[0]
  a, rest = axes[0], tuple(axes[1:])
  n = x.shape[a]
  b = math.gcd(n, ROW_BLOCKS)

  def split(v):
    inner = (1, 1) if v.shape[a] == 1 else (b, n // b)
    return v.reshape(v.shape[:a] + inner + v.shape[a + 1 :])

  def row(v, j):
    if v.shape[a + 1] == 1:
      return jnp.squeeze(v, a + 1)
    return jax.lax.dynamic_index_in_dim(v, j, a + 1, keepdims=False)

  blocks = [split(v) for v in operands]

  def rows_j(j):
    y = y_of(*(row(v, j) for v in blocks))
    return jnp.sum(y * y, axis=rest, keepdims=True)

  # Started from row 0, not from zeros, so the carry has the rows' type
  # (their sharding, under Explicit mesh axes).
  acc = jax.lax.fori_loop(1, n // b, lambda j, acc: acc + rows_j(j), rows_j(0))
  sharding = _sharding.explicit_sharding(acc)
  if sharding is not None and sharding.spec[a] is not None:
    # Halves of an Explicit-sharded axis are a type error; a (b, k) sum is
    # small either way.
    return jnp.sum(acc, axis=a, keepdims=True)
  # Halving: contiguous adds (a strided reduction of (b, k) costs more than
  # the b halvings, as in the loop above).
  while acc.shape[a] > 1:
    half = acc.shape[a] // 2
    top = jax.lax.slice_in_dim(acc, 0, half, axis=a)
    acc = top + jax.lax.slice_in_dim(acc, half, 2 * half, axis=a)
  return acc


def initial_col_scale(layout: CanonicalLayout) -> jax.Array:
  """The cold start ``c_0 = 1``: float32 ones of the leaf's shape with its
  output (fan_out) axes reduced to 1, i.e. ``n`` floats per matrix."""
  return jnp.ones(_col_shape(layout.shape, layout), jnp.float32)


def _col_shape(shape, layout: CanonicalLayout) -> list[int]:
  return [1 if a in layout.output_axes else d for a, d in enumerate(shape)]


def scale_free(c: jax.Array, layout: CanonicalLayout) -> jax.Array:
  r"""A column scaling vector as stored between steps.

  .. math:: \hat c = c \cdot 2^{-e}, \quad \max_j c_j = f\, 2^{e},\ f \in [1/2, 1),
     \qquad \hat c_j = 1 \text{ where } c_j = 0

  The update ``G_L = r_L G c_L^T`` does not change when ``c_0`` is multiplied
  by ``t > 0``: every later ``r`` is divided by ``t`` and every ``c``
  multiplied by it. And ``c_t`` (``t >= 1``) does not depend on the scale of
  ``G``: multiplying ``G`` by ``k`` divides ``r_t`` by ``k`` and leaves
  ``c_t`` as it is. So the stored vector carries only the *shape* of the
  column scaling; scaling it by a power of two is exact and keeps its size
  from drifting over many steps, and a gradient ``10^{30}`` times larger (or
  smaller) than the last one starts from the same ``c``. A zero entry (a
  column that was all zero) restarts from the cold start's 1: a zero ``c_0``
  would keep that column at zero forever.
  """
  cmax = jnp.max(c, axis=layout.reduction_axes, keepdims=True)
  return jnp.where(c > 0, to_unit_max(c, cmax), 1.0).astype(jnp.float32)


def sinkhorn_scaled(
  g: jax.Array,
  layout: CanonicalLayout,
  num_iters,
  *,
  overflow_guard: str = "max_abs",
) -> jax.Array:
  """``G_L`` of SR-Sinkhorn for one leaf, in the leaf's layout and dtype.

  Equal (up to float32 rounding) to :func:`multinorm_optax.alternate_normalizers`
  with ``[row_l2, col_l2]``, including its float32 math, its scale invariance
  (``G`` is divided by a power of two near ``max |G|`` inside each read, see
  :func:`~multinorm_optax.normalizers.to_unit_max`), zero rows and columns
  staying zero, and its NaN policy (a non-finite entry, or a traced
  ``num_iters`` below 1, makes the matrix NaN). ``overflow_guard``: see
  :func:`sinkhorn_warm`.
  """
  return sinkhorn_warm(g, layout, num_iters, None, overflow_guard)[0]


def sinkhorn_warm(
  g: jax.Array,
  layout: CanonicalLayout,
  num_iters,
  col_scale: jax.Array | None,
  overflow_guard: str = "max_abs",
) -> tuple[jax.Array, jax.Array]:
  r"""``(G_L, c)``: SR-Sinkhorn started from ``c_0 = col_scale`` (None: ones).

  The returned ``c`` is :func:`scale_free` of ``c_L``, to be passed as the
  next step's ``col_scale``; where a matrix is not normalized (a non-finite
  entry, a traced ``num_iters`` below 1) it is ``col_scale`` unchanged, so a
  NaN step never poisons the later ones. ``G_L``'s NaN policy and scale
  invariance are :func:`sinkhorn_scaled`'s; any ``c_0 > 0`` leads to the same
  fixed point (Sinkhorn's scaling of ``G * G`` is unique up to the factor
  that ``G_L`` ignores), only the distance to it after ``L`` rounds changes.

  ``overflow_guard``:

  - ``"max_abs"``: every read works on ``G / 2^e`` with ``2^e`` near
    ``max |G|`` (one more full read of ``G`` per step), so squares stay in
    float32's range for every finite gradient;
  - ``"on_demand"``: the rounds run on ``G`` as it is. If any row or column
    sum of squares is not finite (overflow, or a NaN/Inf in ``G``) or below
    ``MIN_UNSCALED_SUM`` (underflow, or an all-zero row or column), the
    rounds are redone the ``"max_abs"`` way, chosen by one ``lax.cond`` on a
    scalar for the whole leaf. Without over- or underflow the two agree to
    the last bit up to the order of summation (scaling by ``2^e`` is exact),
    so the results match; the common step reads ``G`` ``2L + 1`` times
    instead of ``2L + 2``.
  """
  if overflow_guard not in OVERFLOW_GUARDS:
    raise ValueError(
      f"unknown overflow_guard {overflow_guard!r}; choose one of "
      f"{OVERFLOW_GUARDS}"
    )
  c_init = initial_col_scale(layout) if col_scale is None else col_scale
  if g.size == 0:
    return g, c_init
  rows_of = (
    layout.reduction_axes
  )  # reducing over fan_in gives one value per row
  cols_of = layout.output_axes
  matrix_axes = rows_of + cols_of
  f32 = jnp.promote_types(g.dtype, jnp.float32)
  x = g.astype(f32)
  sqrt_n = jnp.sqrt(jnp.asarray(layout.n, f32))
  sqrt_m = jnp.sqrt(jnp.asarray(layout.m, f32))
  r_init = jnp.ones(
    [1 if a in rows_of else d for a, d in enumerate(g.shape)], f32
  )
  c0 = c_init.astype(f32)

  def rounds(amax, check: bool):
    # The scale is applied before squaring and differs in every half-step,
    # so XLA cannot merge the reads into one shared (materialized) G * G.
    if amax is None:
      y_of, ops = (lambda x, scale: x * scale), (x,)
    else:
      y_of, ops = (lambda x, m, scale: to_unit_max(x, m) * scale), (x, amax)

    def squares(scale, axes):
      return sum_of_squares(y_of, ops + (scale,), axes)

    def accurate(s):
      return jnp.all(jnp.isfinite(s) & (s >= MIN_UNSCALED_SUM))

    def one_round(_, carry):
      _, c, ok = carry
      s = squares(c, rows_of)
      r = safe_ratio(sqrt_n, sqrt0(s))
      t = squares(r, cols_of)
      c = safe_ratio(sqrt_m, sqrt0(t))
      if check:
        ok = ok & accurate(s) & accurate(t)
      return r, c, ok

    return repeat(one_round, num_iters, (r_init, c0, jnp.array(True)))

  def rescaled():
    amax = jnp.max(jnp.abs(x), axis=matrix_axes, keepdims=True)
    r, c, _ = rounds(amax, check=False)
    return r, c, amax

  if overflow_guard == "max_abs":
    r, c, amax = rescaled()
  else:
    r, c, ok = rounds(None, check=True)
    # to_unit_max(x, 0) is x: the update below then reads G unscaled.
    unscaled = jnp.zeros(
      [1 if a in matrix_axes else d for a, d in enumerate(g.shape)], f32
    )
    r, c, amax = jax.lax.cond(ok, lambda: (r, c, unscaled), rescaled)
  normalized = jnp.isfinite(amax) & (num_iters >= 1)
  out = jnp.where(normalized, to_unit_max(x, amax) * r * c, jnp.nan)
  # A c that overflowed on a finite G (far outside any gradient we have
  # seen) is not kept either: the next step starts from the last good one.
  keep = normalized & jnp.all(
    jnp.isfinite(c), axis=layout.reduction_axes, keepdims=True
  )
  c_next = jnp.where(keep, scale_free(c, layout), c_init)
  return out.astype(g.dtype), c_next
