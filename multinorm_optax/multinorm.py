r"""Multi-normalized gradient descent (MNGD) as stateless Optax transforms.

MNGD (Scetbon et al., 2025, arXiv 2502.06742, Algorithm 1) normalizes the
instantaneous gradient of each weight matrix with respect to several norms at
once by alternating projections: with normalizers ``P_1 .. P_K``,

.. math::
   G_0 = G, \qquad G_t = P_K \circ \dots \circ P_1 (G_{t-1}), \quad t = 1..L,

and the update direction is ``G_L``. No optimizer state is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from multinorm_optax import layout as layout_lib
from multinorm_optax import normalizers as norms
from multinorm_optax import sinkhorn
from multinorm_optax.layout import DimensionNumbers

Normalizer = Callable[[jax.Array], jax.Array]
# None, one DimensionNumbers for every leaf, a tree (prefix) of them with None
# for leaves to leave untouched, or a callable (path, leaf) -> DimensionNumbers | None.
DimensionNumbersSpec = Any


def alternate_normalizers(
  g: jax.Array, normalizers: Sequence[Normalizer], num_iters
) -> jax.Array:
  r"""The alternating scheme on one matrix ``g`` of shape ``(m, n)``.

  .. math:: G_L = (P_K \circ \dots \circ P_1)^{L} (G / \max_{ij} |G_{ij}|)

  The first division (by a power of two near ``max |G|``, see
  :func:`~multinorm_optax.normalizers.to_unit_max`) is exact for the result,
  because every normalizer is
  invariant to positive scaling, and it keeps squares of the entries inside
  float32's range for every finite gradient, up to float32's largest value.

  Non-finite policy: if ``g`` holds a NaN or Inf, the whole result is NaN, so
  ``optax.apply_if_finite`` (or a NaN check on the loss) can skip the step
  instead of applying a partly normalized update. So is the result of a
  traced ``num_iters`` below 1 (under ``optax.inject_hyperparams``), which
  the static path refuses with a ValueError: zero rounds would leave ``G``
  unnormalized, silently.

  Args:
    g: one matrix ``(m, n)`` (or ``(..., m, n)`` if every normalizer handles
      leading axes) in the paper's ``(fan_out, fan_in)`` view.
    normalizers: the projections ``P_1 .. P_K``, each a positively
      scale-invariant function from a matrix to one of the same shape.
    num_iters: ``L``, the rounds; a Python ``int`` (unrolled) or a traced
      integer (a ``fori_loop``).

  Returns:
    ``G_L`` in ``g``'s shape and dtype (all NaN when ``g`` is not finite or a
    traced ``num_iters`` is below 1).

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import alternate_normalizers, col_l2, row_l2
    >>> g = jax.random.normal(jax.random.key(0), (4, 8))
    >>> x = alternate_normalizers(g, [row_l2, col_l2], 5)
    >>> col_norms = jnp.linalg.norm(x, axis=0)  # the last step: columns
    >>> print(x.shape, bool(jnp.allclose(col_norms, 2.0)))
    (4, 8) True
  """
  if g.size == 0:
    return g
  x = g.astype(jnp.promote_types(g.dtype, jnp.float32))
  amax = jnp.max(jnp.abs(x))
  x = norms.to_unit_max(x, amax)

  def one_round(_, x):
    for normalize in normalizers:
      x = normalize(x)
    return x

  x = norms.repeat(one_round, num_iters, x)
  x = jnp.where(jnp.isfinite(amax) & (num_iters >= 1), x, jnp.nan)
  return x.astype(g.dtype)


def fixed_point_residual(
  normalizers: Sequence[Normalizer], x: jax.Array
) -> jax.Array:
  r"""Distance of ``x`` (canonical ``(..., m, n)``) from a joint fixed point.

  .. math:: r(X) = \max_k \lVert P_k(X) - X \rVert_F / \lVert X \rVert_F

  Zero exactly when every normalizer leaves ``X`` unchanged, i.e. ``X`` lies
  on all the spheres at once. Returns one value per matrix (batch shape).

  Args:
    normalizers: the projections ``P_k``.
    x: ``(..., m, n)``, leading axes batch axes.

  Returns:
    float32 residuals of ``x``'s batch shape (a scalar for one matrix); 0 for
    an all-zero matrix.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax
    >>> from multinorm_optax import (
    ...     alternate_normalizers, col_l2, fixed_point_residual, row_l2)
    >>> g = jax.random.normal(jax.random.key(0), (4, 8))
    >>> x = alternate_normalizers(g, [row_l2, col_l2], 5)
    >>> print(bool(fixed_point_residual([row_l2, col_l2], g) > 0.1))
    True
    >>> print(bool(fixed_point_residual([row_l2, col_l2], x) < 1e-2))
    True
  """
  x = x.astype(jnp.float32)
  scale = jnp.sqrt(jnp.sum(x * x, axis=(-2, -1)))
  residuals = [
    jnp.sqrt(jnp.sum(jnp.square(p(x).astype(jnp.float32) - x), axis=(-2, -1)))
    for p in normalizers
  ]
  return norms.safe_ratio(jnp.max(jnp.stack(residuals), axis=0), scale)


def _check_leaf(name: str, leaf) -> None:
  dtype = jnp.dtype(leaf.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    kind = (
      "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "non-float"
    )
    raise ValueError(
      f"multinorm: leaf '{name}' has {kind} dtype {dtype}; only real floating "
      "gradients can be normalized"
    )


# Marks a leaf that the user's spec leaves unchanged, as opposed to None = default.
SKIP = DimensionNumbers((), ())


def leaf_dimension_numbers(spec: DimensionNumbersSpec, tree) -> list:
  """Each leaf's declared :class:`DimensionNumbers`, in flattening order.

  ``spec`` as in :func:`multinorm`. A leaf gets None when ``spec`` is None
  (nothing declared: the default layout applies) and ``SKIP`` when the spec
  maps it to None (leave it unchanged). Nothing is validated here.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
  if spec is None or isinstance(spec, DimensionNumbers):
    return [spec] * len(leaves_with_path)
  if callable(spec):
    # Paths as 'layers/0/attn/q_proj/kernel', as in the error messages.
    return [
      spec(jax.tree_util.keystr(p, simple=True, separator="/"), x) or SKIP
      for p, x in leaves_with_path
    ]
  # A tree prefix: broadcast each spec over the subtree below it.
  is_spec = lambda x: x is None or isinstance(x, DimensionNumbers)
  broadcast = jax.tree_util.tree_map(
    lambda dn, sub: jax.tree_util.tree_map(lambda _: dn or SKIP, sub),
    spec,
    tree,
    is_leaf=is_spec,
  )
  return jax.tree_util.tree_leaves(broadcast, is_leaf=is_spec)


def leaf_layouts(spec: DimensionNumbersSpec, tree) -> list:
  """Each leaf's CanonicalLayout (None: leave it unchanged), in flattening order.

  Raises:
    ValueError: naming the leaf's path and shape when its spec does not fit,
      when it is not a real float, or when the default spec meets a leaf with
      fewer than two axes.
  """
  leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
  names = [
    jax.tree_util.keystr(p, simple=True, separator="/")
    for p, _ in leaves_with_path
  ]
  leaves = [x for _, x in leaves_with_path]
  specs = leaf_dimension_numbers(spec, tree)
  return [_layout(*args) for args in zip(names, leaves, specs)]


def _layout(name: str, leaf, dn) -> layout_lib.CanonicalLayout | None:
  if dn is SKIP:
    return None
  if dn is None:
    dn = layout_lib.default_dimension_numbers(leaf.shape)
    if dn is None:
      raise ValueError(
        f"multinorm: leaf '{name}' with shape {tuple(leaf.shape)} is not a "
        "matrix; give it dimension_numbers None to leave it unchanged, or use "
        "sinkgd()/swan(), which send such leaves to AdamW"
      )
  _check_leaf(name, leaf)
  return layout_lib.canonical_layout(
    leaf.shape, dn, name=f"multinorm: leaf '{name}'"
  )


def multinorm(
  normalizers: Sequence[Normalizer],
  num_iters: int = 1,
  *,
  dimension_numbers: DimensionNumbersSpec = None,
) -> optax.GradientTransformation:
  r"""MNGD: alternate ``normalizers`` on every matrix gradient, ``num_iters`` times.

  For each leaf the gradient is viewed as ``(*batch, m, n)`` with
  ``m = fan_out`` and ``n = fan_in`` (see :class:`DimensionNumbers`), then

  .. math:: G_L = (P_K \circ \dots \circ P_1)^{L}(G)

  is computed for every matrix of the batch and mapped back to the leaf's
  layout and dtype. Norms are computed in float32. The state is empty.

  Args:
    normalizers: functions ``P_k`` from one canonical ``(m, n)`` matrix to one
      of the same shape, each a projection onto one norm's sphere (positively
      scale-invariant), e.g. :func:`row_l2`, :func:`col_l2`, or your own.
    num_iters: ``L``, rounds of the alternating scheme.
    dimension_numbers: None (Flax layout: the last two axes are ``(fan_in,
      fan_out)``, leading axes are batch; leaves with fewer than two axes raise),
      one :class:`DimensionNumbers` for all leaves, a tree of them (a prefix of
      the gradient tree; None leaves a subtree unchanged), or a callable
      ``(path, leaf) -> DimensionNumbers | None``.

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import multinorm_optax as mno
    >>> tx = mno.multinorm([mno.row_l2, mno.col_l2], num_iters=3)
    >>> grads = {"kernel": jax.random.normal(jax.random.key(0), (6, 4))}
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> # A Flax kernel is (fan_in, fan_out): its rows are the paper's columns,
    >>> # normalized last, to sqrt(fan_out) = 2.
    >>> norms = jnp.linalg.norm(updates["kernel"], axis=1)
    >>> print(updates["kernel"].shape, bool(jnp.allclose(norms, 2.0)))
    (6, 4) True

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless and
    Scalable LLM Training*, 2025, arXiv 2502.06742.
  """
  normalizers = tuple(normalizers)
  if not normalizers:
    raise ValueError("multinorm: normalizers is empty; give at least one")
  if isinstance(num_iters, int) and num_iters < 1:
    raise ValueError(f"multinorm: num_iters must be >= 1, got {num_iters}")

  def normalize_leaf(g, lay):
    out = layout_lib.map_batch(
      lambda mat: alternate_normalizers(mat, normalizers, num_iters),
      layout_lib.to_canonical(g, lay),
      len(lay.batch_axes),
    )
    return layout_lib.from_canonical(out, lay)

  return per_matrix_transform(normalize_leaf, dimension_numbers)


def per_matrix_transform(
  normalize_leaf: Callable[[jax.Array, layout_lib.CanonicalLayout], jax.Array],
  dimension_numbers: DimensionNumbersSpec,
) -> optax.GradientTransformation:
  """A stateless transform applying ``normalize_leaf(g, layout)`` to every matrix leaf."""

  def init_fn(params):
    leaf_layouts(
      dimension_numbers, params
    )  # fail early on specs that do not fit
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    flat, treedef = jax.tree_util.tree_flatten(updates)
    layouts = leaf_layouts(dimension_numbers, updates)
    out = [
      g if lay is None else normalize_leaf(g, lay)
      for g, lay in zip(flat, layouts)
    ]
    return treedef.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)


SINKGD_IMPLS = ("auto", "fused", "reference")


class ScaleBySinkGDState(NamedTuple):
  """State of :func:`scale_by_sinkgd` with ``warm_start=True``.

  ``col_scale``: a tree like the gradients holding, for each normalized
  matrix leaf, its column scaling vector ``c`` from the previous step
  (float32, the leaf's shape with the fan_out axes reduced to 1: ``n`` floats
  per matrix, see :func:`multinorm_optax.sinkhorn.scale_free`), and
  ``optax.MaskedNode()`` for the leaves left unchanged.
  """

  col_scale: Any


def scale_by_sinkgd(
  num_iters: int = 5,
  *,
  dimension_numbers: DimensionNumbersSpec = None,
  impl: str = "auto",
  warm_start: bool = False,
  overflow_guard: str = "max_abs",
) -> optax.GradientTransformation:
  r"""SR-Sinkhorn (the paper's Algorithm 3): rows to ``sqrt(n)``, then columns to ``sqrt(m)``.

  .. math:: G_t = P_{col}(P_{row}(G_{t-1})), \quad t = 1..L

  On the paper's ``(m, n) = (fan_out, fan_in)`` layout; a Flax kernel is its
  transpose. After the last (column) step every column has norm ``sqrt(m)``
  exactly; the row norms approach ``sqrt(n)`` as ``L`` grows.

  Args:
    num_iters: ``L``.
    dimension_numbers: see :func:`multinorm`.
    impl: ``"reference"`` is ``multinorm([row_l2, col_l2], num_iters)``, each
      normalization materialized; ``"fused"`` computes the same result through
      its row and column scaling vectors (``sinkhorn.py``), reading the
      gradient ``2L + 1`` times and writing it once; ``"auto"`` (default)
      picks ``"fused"``, the fastest we have measured (docs/BENCHMARKS.md).
    warm_start: start each step's rounds from the previous step's column
      scaling ``c`` instead of ``c_0 = 1`` (fused only). The fixed point is
      the same; along a training run, where the gradient changes little from
      one step to the next, a small ``num_iters`` (even 1) then stays close
      to it. State: ``n`` float32 per ``(m, n)`` matrix, about ``1/m`` of the
      parameter (:class:`ScaleBySinkGDState`); the first step equals the cold
      start, a non-finite step leaves the state unchanged, and the state does
      not depend on the gradient's scale.
    overflow_guard: ``"max_abs"`` (default) divides the gradient by a power of
      two near ``max |G|`` before squaring, a full read of its own;
      ``"on_demand"`` (fused only) squares ``G`` as it is and falls back to
      the ``"max_abs"`` computation (one ``lax.cond`` per leaf) only when a
      sum of squares overflows or is too small to be accurate. Same results,
      one read of ``G`` fewer per step in the common case; see
      :func:`multinorm_optax.sinkhorn.sinkhorn_warm`.

  Returns:
    An ``optax.GradientTransformation``: stateless (``optax.EmptyState``)
    unless ``warm_start``, then :class:`ScaleBySinkGDState`.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import multinorm_optax as mno
    >>> grads = {"kernel": jax.random.normal(jax.random.key(0), (6, 4))}
    >>> tx = mno.scale_by_sinkgd(num_iters=5)
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> reference = mno.multinorm([mno.row_l2, mno.col_l2], 5)
    >>> expected, _ = reference.update(grads, reference.init(grads))
    >>> print(bool(jnp.allclose(updates["kernel"], expected["kernel"], atol=1e-5)))
    True
  """
  if impl not in SINKGD_IMPLS:
    raise ValueError(
      f"scale_by_sinkgd: unknown impl {impl!r}; choose one of {SINKGD_IMPLS}"
    )
  if overflow_guard not in sinkhorn.OVERFLOW_GUARDS:
    raise ValueError(
      f"scale_by_sinkgd: unknown overflow_guard {overflow_guard!r}; choose "
      f"one of {sinkhorn.OVERFLOW_GUARDS}"
    )
  if impl == "reference":
    if warm_start or overflow_guard != "max_abs":
      raise ValueError(
        "scale_by_sinkgd: warm_start and overflow_guard='on_demand' need "
        "impl='fused' (or 'auto'), not impl='reference'"
      )
    return multinorm(
      [norms.row_l2, norms.col_l2],
      num_iters,
      dimension_numbers=dimension_numbers,
    )
  if isinstance(num_iters, int) and num_iters < 1:
    raise ValueError(
      f"scale_by_sinkgd: num_iters must be >= 1, got {num_iters}"
    )
  if not warm_start:
    return per_matrix_transform(
      lambda g, lay: sinkhorn.sinkhorn_scaled(
        g, lay, num_iters, overflow_guard=overflow_guard
      ),
      dimension_numbers,
    )

  def init_fn(params):
    flat, treedef = jax.tree_util.tree_flatten(params)
    layouts = leaf_layouts(dimension_numbers, params)
    return ScaleBySinkGDState(
      treedef.unflatten(
        [
          optax.MaskedNode() if lay is None else sinkhorn.initial_col_scale(lay)
          for lay in layouts
        ]
      )
    )

  def update_fn(updates, state, params=None):
    del params
    flat, treedef = jax.tree_util.tree_flatten(updates)
    layouts = leaf_layouts(dimension_numbers, updates)
    col_scales = treedef.flatten_up_to(state.col_scale)
    out, new_scales = [], []
    for g, lay, c in zip(flat, layouts, col_scales):
      if lay is None:
        out.append(g)
        new_scales.append(c)
        continue
      u, c = sinkhorn.sinkhorn_warm(g, lay, num_iters, c, overflow_guard)
      out.append(u)
      new_scales.append(c)
    return treedef.unflatten(out), ScaleBySinkGDState(
      treedef.unflatten(new_scales)
    )

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_swan(
  *,
  ns_steps: int | None = None,
  rescale: bool = True,
  dimension_numbers: DimensionNumbersSpec = None,
  whiten_mode: str = norms.DEFAULT_WHITEN_MODE,
) -> optax.GradientTransformation:
  r"""SWAN: GradNorm (row standardization) then GradWhitening, one round.

  .. math:: \Delta = \frac{\lVert \tilde G \rVert_F}{\lVert W \rVert_F} W, \quad
     W = (\tilde G \tilde G^\top)^{-1/2} \tilde G, \quad
     \tilde G = \mathrm{row\_standardize}(G)

  With ``rescale=True`` (SWAN's optional rescaling) the whitened update is
  scaled back to the Frobenius norm of ``\tilde G``, ``sqrt(mn)``: RMS 1 like
  SinkGD's updates, so learning rates transfer between the two (for a
  full-rank ``\tilde G`` the factor is ``sqrt(max(m, n))``). This is
  ``multinorm([row_standardize, whiten, rms], 1)``; with ``rescale=False`` it
  is exactly ``multinorm([row_standardize, whiten], 1)``.

  Args:
    ns_steps: iterations of the whitening; None for ``whiten_mode``'s default.
    rescale: rescale the update to RMS 1.
    dimension_numbers: see :func:`multinorm`.
    whiten_mode: ``"fast"`` (default), ``"exact"`` or ``"newton_schulz"``
      (the default before the modes existed), see :func:`whiten` (cost and
      accuracy of each in docs/BENCHMARKS.md).

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  References:
    Ma, Gong, Scetbon, Meeds, *SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training*, 2024, arXiv 2412.13148.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import multinorm_optax as mno
    >>> grads = {"kernel": jax.random.normal(jax.random.key(0), (6, 4))}
    >>> tx = mno.scale_by_swan()
    >>> updates, _ = tx.update(grads, tx.init(grads))
    >>> u = updates["kernel"]
    >>> # Whitened: all singular values equal (to the default mode's 1.25e-2);
    >>> # rescaled: RMS 1.
    >>> s = jnp.linalg.svd(u, compute_uv=False)
    >>> print(bool(jnp.allclose(s, s.mean(), rtol=3e-2)))
    True
    >>> print(round(float(jnp.sqrt(jnp.mean(u**2))), 4))
    1.0
  """
  if whiten_mode not in norms.WHITEN_MODES:
    raise ValueError(
      f"scale_by_swan: unknown whiten_mode {whiten_mode!r}; choose one of "
      f"{norms.WHITEN_MODES}"
    )
  whiten = functools.partial(norms.whiten, mode=whiten_mode, ns_steps=ns_steps)
  chain = [norms.row_standardize, whiten] + ([norms.rms] if rescale else [])
  return multinorm(chain, 1, dimension_numbers=dimension_numbers)
