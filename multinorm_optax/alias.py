"""The paper's full optimizers: normalized updates for hidden matrices, AdamW for the rest."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import optax

from multinorm_optax import multinorm as mn
from multinorm_optax import normalizers as norms
from multinorm_optax import update_scale as us
from multinorm_optax.layout import (
  CanonicalLayout,
  DimensionNumbers,
  canonical_layout,
)

MATRIX = "multinorm"
ADAM = "adam"

# Path components that mark a parameter for AdamW whatever its shape: the
# paper's recipe normalizes hidden weight matrices only.
_ADAM_SUBSTRINGS = ("embed", "lm_head", "norm", "bias")
_ADAM_NAMES = frozenset(
  {"head", "wte", "wpe", "output", "logits", "scale", "classifier"}
)


def _is_adam_by_name(path) -> bool:
  for key in path:
    part = jax.tree_util.keystr((key,), simple=True).lower()
    if part in _ADAM_NAMES or any(s in part for s in _ADAM_SUBSTRINGS):
      return True
  return False


def matrix_layout(path, leaf, declared) -> CanonicalLayout | None:
  """A leaf's matrix layout under the label rule, or None: not a known matrix.

  ``declared`` is the leaf's entry of :func:`multinorm.leaf_dimension_numbers`.
  A leaf has a layout when it has two axes and nothing is declared (Flax's
  ``(fan_in, fan_out)``), or when a :class:`DimensionNumbers` is declared
  for it. Every other leaf, in particular one with more than two axes and
  nothing declared, has None: its axes could be ``(in, heads, head_dim)``,
  ``(h, w, in, out)`` or ``(layers, in, out)``, and the shape alone does not
  say which.
  """
  shape = tuple(getattr(leaf, "shape", ()))
  if len(shape) < 2 or declared is mn.SKIP:
    return None
  if declared is None:
    if len(shape) != 2:
      return None
    declared = DimensionNumbers(0, 1)
  name = jax.tree_util.keystr(path, simple=True, separator="/")
  return canonical_layout(shape, declared, name=f"leaf '{name}'")


def default_param_labels(
  params,
  dimension_numbers: mn.DimensionNumbersSpec = None,
  *,
  min_fan_in: int = 1,
) -> Any:
  """Labels each leaf ``'multinorm'`` (hidden matrices) or ``'adam'`` (the rest).

  A leaf is a hidden matrix, normalized, when all of these hold:

  - its layout is known: it has exactly two axes (Flax's ``(fan_in,
    fan_out)``) and ``dimension_numbers`` is None, or ``dimension_numbers``
    declares its layout (a :class:`DimensionNumbers` for it). A leaf with
    more than two axes and no declared layout (``nnx.Conv``'s ``(h, w, in,
    out)``, ``nnx.MultiHeadAttention``'s ``(in, heads, head_dim)``, scanned
    layers, stacked experts) goes to AdamW, as in ``optax.contrib.muon``:
    normalizing it on guessed axes would be a different optimizer;
  - no component of its path names an embedding, the LM head, a norm or a
    bias: a component containing one of ``embed, lm_head, norm, bias``, or
    equal to one of ``head, wte, wpe, output, logits, scale, classifier``
    (case-insensitive);
  - its fan_in (the product of its reduction axes) is at least
    ``min_fan_in``.

  Everything else (biases, norm scales, scalars, embeddings, the head, and
  the undeclared leaves above) is ``'adam'``.

  Args:
    params: a tree of arrays (or anything with a ``shape``), e.g.
      ``nnx.state(model, nnx.Param)``.
    dimension_numbers: the layouts the caller declares, as in
      :func:`multinorm`: None (only 2-D leaves are matrices), one
      :class:`DimensionNumbers` for every leaf with two or more axes, a tree
      prefix of them, or a callable ``(path, leaf) -> DimensionNumbers |
      None``; a leaf declared None goes to AdamW.
    min_fan_in: matrices with a smaller fan_in go to AdamW (:func:`swan`
      uses 2: standardizing a row of length 1 gives exactly zero).

  Returns:
    A tree like ``params`` of ``'multinorm'`` and ``'adam'`` strings.

  Raises:
    ValueError: naming the leaf path and shape when a declared layout does
      not fit the leaf.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742. (Section 5:
    normalized hidden matrices, AdamW for the rest)

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import DimensionNumbers, default_param_labels
    >>> params = {
    ...     "embed": jnp.zeros((10, 4)),
    ...     "mlp": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
    ...     "norm": {"scale": jnp.ones(4)},
    ...     "experts": jnp.zeros((3, 4, 8)),  # (experts, in, out)
    ... }
    >>> print(default_param_labels(params))
    {'embed': 'adam', 'experts': 'adam', 'mlp': {'bias': 'adam', 'kernel': 'multinorm'}, 'norm': {'scale': 'adam'}}
    >>> declared = lambda path, leaf: DimensionNumbers(leaf.ndim - 2, leaf.ndim - 1)
    >>> print(default_param_labels(params, declared)["experts"])
    multinorm
  """

  def label(path, leaf, declared) -> str:
    if _is_adam_by_name(path):
      return ADAM
    lay = matrix_layout(path, leaf, declared)
    return ADAM if lay is None or lay.n < min_fan_in else MATRIX

  return _map_declared(label, params, dimension_numbers)


def _map_declared(fn, params, dimension_numbers):
  """``fn(path, leaf, declared)`` on every leaf, as a tree like ``params``."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  declared = mn.leaf_dimension_numbers(dimension_numbers, params)
  return treedef.unflatten(
    [fn(path, x, dn) for (path, x), dn in zip(flat, declared)]
  )


# Path components that exempt a parameter from weight decay whatever its shape.
_NO_DECAY_SUBSTRINGS = ("norm", "bias")
_NO_DECAY_NAMES = frozenset({"scale"})
_EMBEDDING_SUBSTRINGS = ("embed",)
_EMBEDDING_NAMES = frozenset({"wte", "wpe"})


def default_weight_decay_mask(params, *, decay_embeddings: bool = False) -> Any:
  """``True`` for the leaves that weight decay shrinks, ``False`` for the rest.

  The usual convention (optax's ``adamw(mask=...)``, nanoGPT's two parameter
  groups): decay acts on weight matrices only. A leaf is not decayed when it
  has fewer than two axes (biases, norm scales, scalars), when a component of
  its path contains ``norm`` or ``bias`` or equals ``scale``, or, unless
  ``decay_embeddings``, when it is an embedding table (a component containing
  ``embed`` or equal to ``wte`` or ``wpe``; case-insensitive). Hidden matrices
  and an untied LM head are decayed. nanoGPT does decay its embedding (tied to
  its head); ``decay_embeddings=True`` gives that behaviour.

  Args:
    params: a tree of arrays (or anything with a ``shape``).
    decay_embeddings: also decay the embedding tables.

  Returns:
    A tree like ``params`` of Python booleans, for ``optax.adamw(mask=...)``
    or the recipes' ``weight_decay_mask``.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742. (the recipe whose groups it
    masks)

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import default_weight_decay_mask
    >>> params = {
    ...     "embed": {"embedding": jnp.zeros((10, 4))},
    ...     "mlp": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
    ...     "norm": {"scale": jnp.ones(4)},
    ... }
    >>> print(default_weight_decay_mask(params))
    {'embed': {'embedding': False}, 'mlp': {'bias': False, 'kernel': True}, 'norm': {'scale': False}}
    >>> print(default_weight_decay_mask(params, decay_embeddings=True)["embed"])
    {'embedding': True}
  """

  def decayed(path, leaf) -> bool:
    if len(getattr(leaf, "shape", ())) < 2:
      return False
    for key in path:
      part = jax.tree_util.keystr((key,), simple=True).lower()
      if part in _NO_DECAY_NAMES or any(
        s in part for s in _NO_DECAY_SUBSTRINGS
      ):
        return False
      embedding = part in _EMBEDDING_NAMES or any(
        s in part for s in _EMBEDDING_SUBSTRINGS
      )
      if embedding and not decay_embeddings:
        return False
    return True

  return jax.tree_util.tree_map_with_path(decayed, params)


def _within_group(mask):
  """``mask`` as one group of ``optax.partition`` sees it.

  A group's params hold ``optax.MaskedNode`` where other groups' leaves are; a
  callable mask maps that tree leaf by leaf, a tree mask is cut to match it.
  """
  if callable(mask):
    return mask
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return lambda params: jax.tree.map(
    lambda p, m: p if is_masked(p) else m, params, mask, is_leaf=is_masked
  )


def _times(
  alpha, learning_rate: optax.ScalarOrSchedule
) -> optax.ScalarOrSchedule:
  if callable(learning_rate):
    return lambda count: alpha * learning_rate(count)
  return alpha * learning_rate


def with_update_scale(
  normalize: optax.GradientTransformation,
  rule: str,
  dimension_numbers: mn.DimensionNumbersSpec,
) -> optax.GradientTransformation:
  """``normalize`` then :func:`scale_by_shape` of ``rule``; ``"rms"``: ``normalize`` itself."""
  us.update_scale_factor(rule, 1, 1)  # refuse an unknown rule now
  if rule == "rms":
    return normalize
  return optax.chain(
    normalize, us.scale_by_shape(rule, dimension_numbers=dimension_numbers)
  )


def _labels_or_default(param_labels, dimension_numbers, min_fan_in=1):
  """``param_labels``, or :func:`default_param_labels` under the recipe's layouts."""
  if param_labels is not None:
    return param_labels
  return functools.partial(
    default_param_labels,
    dimension_numbers=dimension_numbers,
    min_fan_in=min_fan_in,
  )


MOMENTUM_ORDERS = ("normalize_then_average", "average_then_normalize")
# SR-Sinkhorn's overflow guard by recipe (see scale_by_sinkgd): sinkgd keeps
# the paper's max|G| read every step; the stateless recipe, whose point is a
# cheap step, only redoes a leaf that over- or underflows. Either needs no
# state and gives the same update up to float32 rounding.
SINKGD_OVERFLOW_GUARD = "max_abs"
STATELESS_OVERFLOW_GUARD = "on_demand"


def stateless_overflow_guard(impl: str) -> str:
  """:func:`sinkgd_stateless`'s overflow guard when none is given.

  Args:
    impl: the SR-Sinkhorn implementation, see :func:`scale_by_sinkgd`.

  Returns:
    ``"on_demand"``, or ``"max_abs"`` for ``impl="reference"``, whose
    materialized normalizations have no other guard.
  """
  return (
    SINKGD_OVERFLOW_GUARD if impl == "reference" else STATELESS_OVERFLOW_GUARD
  )


def multinorm_recipe(
  scale_by_normalization: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  alpha: float,
  weight_decay: float,
  adam_learning_rate: optax.ScalarOrSchedule | None,
  adam_b1: float,
  adam_b2: float,
  adam_eps: float,
  adam_weight_decay: float | None,
  weight_decay_mask: Any | Callable[[Any], Any] | None,
  param_labels: Any | Callable[[Any], Any] | None,
  momentum: float | None = None,
  nesterov: bool = False,
  momentum_order: str = "normalize_then_average",
  mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""Partitions the tree: matrices get ``-alpha*lr * (normalized g + wd * p)``, the rest AdamW.

  Weight decay acts only where ``weight_decay_mask`` (default
  :func:`default_weight_decay_mask`) is True, in both groups.

  With ``momentum = beta`` the matrices keep one buffer each (their shape,
  ``optax.trace``; ``N`` is the normalization):

  - ``"normalize_then_average"``: ``m_t = beta m_{t-1} + N(g_t)``, step along
    ``(1 - beta) m_t`` (with ``nesterov``, ``(1 - beta)(N(g_t) + beta m_t)``):
    the factor ``1 - beta`` keeps a steady normalized direction at the step
    it has without momentum, so learning rates stay comparable;
  - ``"average_then_normalize"``: ``m_t = beta m_{t-1} + g_t`` (with
    ``nesterov``, ``g_t + beta m_t``), step along ``N(m_t)``.

  ``None`` keeps no buffer (the paper's stateless recipe).
  """
  mask = _within_group(
    default_weight_decay_mask
    if weight_decay_mask is None
    else weight_decay_mask
  )
  if momentum_order not in MOMENTUM_ORDERS:
    raise ValueError(
      f"unknown momentum_order {momentum_order!r}; choose one of "
      f"{MOMENTUM_ORDERS}"
    )
  if isinstance(momentum, (int, float)) and not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}")
  direction = [scale_by_normalization]
  if momentum is not None:
    trace = optax.trace(
      decay=momentum, nesterov=nesterov, accumulator_dtype=mu_dtype
    )
    if momentum_order == "average_then_normalize":
      direction = [trace, scale_by_normalization]
    else:
      direction += [trace, optax.scale(1.0 - momentum)]
  matrices = optax.chain(
    *direction,
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(_times(alpha, learning_rate)),
  )
  rest = optax.adamw(
    learning_rate if adam_learning_rate is None else adam_learning_rate,
    b1=adam_b1,
    b2=adam_b2,
    eps=adam_eps,
    weight_decay=weight_decay
    if adam_weight_decay is None
    else adam_weight_decay,
    mask=mask,
    mu_dtype=mu_dtype,
  )
  labels = default_param_labels if param_labels is None else param_labels
  return optax.partition({MATRIX: matrices, ADAM: rest}, labels)


def sinkgd(
  learning_rate: optax.ScalarOrSchedule,
  *,
  alpha: float = 0.05,
  num_iters: int = 5,
  weight_decay: float = 0.0,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.999,
  adam_eps: float = 1e-8,
  adam_weight_decay: float | None = None,
  weight_decay_mask: Any | Callable[[Any], Any] | None = None,
  param_labels: Any | Callable[[Any], Any] | None = None,
  dimension_numbers: mn.DimensionNumbersSpec = None,
  impl: str = "auto",
  update_scale: str = "rms",
  warm_start: bool = False,
  overflow_guard: str = SINKGD_OVERFLOW_GUARD,
  momentum: float | None = None,
  nesterov: bool = False,
  momentum_order: str = "normalize_then_average",
  mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""SinkGD, the paper's recipe (Scetbon et al., 2025, Algorithm 3 + Section 5).

  For hidden weight matrices (label ``'multinorm'``), with ``G_L`` the SR-Sinkhorn
  normalization of the gradient (:func:`scale_by_sinkgd`, ``L = num_iters``):

  .. math:: W \leftarrow W - \alpha\,\eta_t\,(G_L + \lambda W)

  Embeddings, the LM head, norm scales, biases and every leaf with fewer than
  two axes (label ``'adam'``) get AdamW with ``adam_learning_rate`` (default
  ``learning_rate``), betas ``(adam_b1, adam_b2)`` and weight decay
  ``adam_weight_decay`` (default ``weight_decay``). Weight decay skips the
  leaves where ``weight_decay_mask`` is False: by default
  (:func:`default_weight_decay_mask`) vectors, norm scales and embeddings.

  Args:
    learning_rate: ``eta``, a float or an optax schedule. The matrices step
      by ``alpha * eta`` (``alpha * learning_rate``), the AdamW group by
      ``eta`` unless ``adam_learning_rate`` is given.
    alpha: the paper's scale of the normalized update relative to
      ``learning_rate`` (0.05).
    num_iters: ``L``, SR-Sinkhorn rounds (5).
    weight_decay: decoupled weight decay ``lambda`` of the matrices (times
      ``alpha * eta``), and of the AdamW group unless ``adam_weight_decay``.
    adam_learning_rate: the AdamW group's learning rate, a float or a
      schedule (None: ``learning_rate``; not multiplied by ``alpha``).
    adam_b1: AdamW's first-moment decay ``beta_1``.
    adam_b2: AdamW's second-moment decay ``beta_2``.
    adam_eps: AdamW's ``epsilon``, added to the root of the second moment.
    adam_weight_decay: the AdamW group's decoupled weight decay (None:
      ``weight_decay``).
    weight_decay_mask: a tree of booleans like the params, or a callable
      ``params -> booleans``: where weight decay applies (both groups);
      default :func:`default_weight_decay_mask`.
    param_labels: a tree of ``'multinorm'``/``'adam'`` labels like the
      params, or a callable ``params -> labels``; default
      :func:`default_param_labels` under ``dimension_numbers``.
    dimension_numbers: the matrices' fan_in/fan_out axes, see
      :func:`multinorm`. It also declares which leaves with more than two
      axes are matrices: without it those go to AdamW (the label rule of
      :func:`default_param_labels`).
    impl: SR-Sinkhorn implementation, see :func:`scale_by_sinkgd`.
    update_scale: ``"rms"`` (the paper's RMS-1 matrix updates), or a
      shape-dependent rule applied after the normalization, ``"spectral"`` or
      ``"mup"`` (:func:`scale_by_shape`; learning rates are not comparable
      across rules).
    warm_start: keep each matrix's column scaling between steps (``n`` floats
      per ``(m, n)`` matrix), see :func:`scale_by_sinkgd`.
    overflow_guard: ``"max_abs"`` or ``"on_demand"``, see
      :func:`scale_by_sinkgd`.
    momentum: ``beta`` in ``[0, 1)`` of a momentum buffer per matrix (None:
      no buffer, the paper's stateless recipe); see :func:`multinorm_recipe`.
    nesterov: with ``momentum``, step along the Nesterov look-ahead
      (``optax.trace(nesterov=True)``) instead of the buffer.
    momentum_order: with ``momentum``, ``"normalize_then_average"`` (average
      the normalized gradients; the step is ``(1 - beta)`` times the buffer)
      or ``"average_then_normalize"`` (normalize the averaged gradient).
    mu_dtype: dtype of AdamW's first moment and of the momentum buffer
      (None: the parameters' dtype), as ``optax.adamw``'s: e.g. float32
      moments for bfloat16 parameters. AdamW's second moment keeps the
      parameters' dtype.

  Returns:
    An ``optax.GradientTransformation``; with the defaults its only state is
    AdamW's for the ``'adam'`` leaves and step counts.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from multinorm_optax import sinkgd
    >>> params = {"kernel": jnp.ones((6, 4)), "bias": jnp.zeros(4)}
    >>> grads = {
    ...     "kernel": jax.random.normal(jax.random.key(0), (6, 4)),
    ...     "bias": jnp.ones(4),
    ... }
    >>> opt = sinkgd(learning_rate=1e-2)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> # The matrix moved by alpha * lr = 5e-4 per entry in RMS.
    >>> print(round(float(jnp.sqrt(jnp.mean(updates["kernel"] ** 2))), 6))
    0.0005
    >>> # The vector got AdamW, whose first step is -lr * sign(g).
    >>> print(bool(jnp.allclose(updates["bias"], -1e-2, rtol=1e-4)))
    True
  """
  return multinorm_recipe(
    with_update_scale(
      mn.scale_by_sinkgd(
        num_iters,
        dimension_numbers=dimension_numbers,
        impl=impl,
        warm_start=warm_start,
        overflow_guard=overflow_guard,
      ),
      update_scale,
      dimension_numbers,
    ),
    learning_rate,
    alpha=alpha,
    weight_decay=weight_decay,
    adam_learning_rate=adam_learning_rate,
    adam_b1=adam_b1,
    adam_b2=adam_b2,
    adam_eps=adam_eps,
    adam_weight_decay=adam_weight_decay,
    weight_decay_mask=weight_decay_mask,
    param_labels=_labels_or_default(param_labels, dimension_numbers),
    momentum=momentum,
    nesterov=nesterov,
    momentum_order=momentum_order,
    mu_dtype=mu_dtype,
  )


def swan(
  learning_rate: optax.ScalarOrSchedule,
  *,
  alpha: float = 0.05,
  ns_steps: int | None = None,
  rescale: bool = True,
  whiten_mode: str = norms.DEFAULT_WHITEN_MODE,
  weight_decay: float = 0.0,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.999,
  adam_eps: float = 1e-8,
  adam_weight_decay: float | None = None,
  weight_decay_mask: Any | Callable[[Any], Any] | None = None,
  param_labels: Any | Callable[[Any], Any] | None = None,
  dimension_numbers: mn.DimensionNumbersSpec = None,
  update_scale: str = "rms",
  momentum: float | None = None,
  nesterov: bool = False,
  momentum_order: str = "normalize_then_average",
  mu_dtype: Any | None = None,
) -> optax.GradientTransformation:
  r"""SWAN (Ma et al., 2024, arXiv 2412.13148) with the same recipe as :func:`sinkgd`.

  For hidden weight matrices (label ``'multinorm'``), with ``S(G)`` the
  normalization of :func:`scale_by_swan` (GradNorm, i.e. row
  standardization, then GradWhitening, rescaled to RMS 1 when ``rescale``):

  .. math:: W \leftarrow W - \alpha\,\eta_t\,(S(G) + \lambda W)

  and AdamW for the rest, exactly as :func:`sinkgd`. Kernels with fan_in 1
  also go to AdamW: standardizing a row of length 1 gives exactly zero.

  Args:
    learning_rate: ``eta``, a float or an optax schedule. The matrices step
      by ``alpha * eta`` (``alpha * learning_rate``), the AdamW group by
      ``eta`` unless ``adam_learning_rate`` is given.
    alpha: scale of the normalized update relative to ``learning_rate``
      (0.05).
    ns_steps: iterations of the whitening; None for ``whiten_mode``'s
      default, see :func:`whiten`.
    rescale: rescale the whitened update to RMS 1 (SWAN's optional
      rescaling), so learning rates transfer from :func:`sinkgd`.
    whiten_mode: ``"fast"`` (default), ``"exact"`` or ``"newton_schulz"``,
      see :func:`whiten`.
    weight_decay: decoupled weight decay ``lambda`` of the matrices (times
      ``alpha * eta``), and of the AdamW group unless ``adam_weight_decay``.
    adam_learning_rate: the AdamW group's learning rate, a float or a
      schedule (None: ``learning_rate``; not multiplied by ``alpha``).
    adam_b1: AdamW's first-moment decay ``beta_1``.
    adam_b2: AdamW's second-moment decay ``beta_2``.
    adam_eps: AdamW's ``epsilon``, added to the root of the second moment.
    adam_weight_decay: the AdamW group's decoupled weight decay (None:
      ``weight_decay``).
    weight_decay_mask: where weight decay applies, see :func:`sinkgd`.
    param_labels: a tree of ``'multinorm'``/``'adam'`` labels like the
      params, or a callable ``params -> labels``; default
      :func:`default_param_labels` under ``dimension_numbers`` with
      ``min_fan_in=2``.
    dimension_numbers: the matrices' fan_in/fan_out axes and which leaves
      with more than two axes are matrices, see :func:`sinkgd`.
    update_scale: as in :func:`sinkgd`; ``"spectral"`` gives the whitened
      update the operator norm ``alpha * eta * sqrt(fan_out / fan_in)``
      exactly, when ``rescale``.
    momentum: ``beta`` of an optional buffer per matrix, see :func:`sinkgd`.
    nesterov: see :func:`sinkgd`.
    momentum_order: see :func:`sinkgd`.
    mu_dtype: dtype of AdamW's first moment and of the momentum buffer, see
      :func:`sinkgd`.

  Returns:
    An ``optax.GradientTransformation``; with the defaults its only state is
    AdamW's for the ``'adam'`` leaves and step counts.

  References:
    Ma, Gong, Scetbon, Meeds, *SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training*, 2024, arXiv 2412.13148.
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import swan
    >>> params = {"kernel": jnp.ones((6, 4)), "bias": jnp.zeros(4)}
    >>> grads = {
    ...     "kernel": jax.random.normal(jax.random.key(0), (6, 4)),
    ...     "bias": jnp.ones(4),
    ... }
    >>> opt = swan(learning_rate=1e-2)
    >>> updates, _ = opt.update(grads, opt.init(params), params)
    >>> print(round(float(jnp.sqrt(jnp.mean(updates["kernel"] ** 2))), 6))
    0.0005
  """
  return multinorm_recipe(
    with_update_scale(
      mn.scale_by_swan(
        ns_steps=ns_steps,
        rescale=rescale,
        dimension_numbers=dimension_numbers,
        whiten_mode=whiten_mode,
      ),
      update_scale,
      dimension_numbers,
    ),
    learning_rate,
    alpha=alpha,
    weight_decay=weight_decay,
    adam_learning_rate=adam_learning_rate,
    adam_b1=adam_b1,
    adam_b2=adam_b2,
    adam_eps=adam_eps,
    adam_weight_decay=adam_weight_decay,
    weight_decay_mask=weight_decay_mask,
    param_labels=_labels_or_default(
      param_labels, dimension_numbers, min_fan_in=2
    ),
    momentum=momentum,
    nesterov=nesterov,
    momentum_order=momentum_order,
    mu_dtype=mu_dtype,
  )


# The groups of sinkgd_stateless: hidden matrices keep MATRIX.
EMBEDDING = "embedding"
HEAD = "head"
VECTOR = "vector"
# Path components that mark a norm scale or a bias whatever its shape (a norm
# scale of stacked layers, --scan-layers, is (layers, d)).
_VECTOR_SUBSTRINGS = ("norm", "bias")
_VECTOR_NAMES = frozenset({"scale"})


def stateless_param_labels(
  params, dimension_numbers: mn.DimensionNumbersSpec = None
) -> Any:
  """Labels for :func:`sinkgd_stateless`: ``'multinorm'``, ``'embedding'``, ``'head'`` or ``'vector'``.

  Hidden matrices are :func:`default_param_labels`' ``'multinorm'`` leaves.
  Of its ``'adam'`` leaves: those with fewer than two axes, or with a path
  component containing ``norm`` or ``bias`` or equal to ``scale``, are
  ``'vector'``; then embedding tables (a component containing ``embed`` or
  equal to ``wte`` or ``wpe``) are ``'embedding'``; the other matrices (the
  LM head, ``output``, ``logits``, ``classifier``) are ``'head'``
  (case-insensitive) when their layout is known, as for the hidden
  matrices; a leaf with more than two axes and no declared layout is
  ``'vector'``: sign descent is elementwise and needs no layout.

  Args:
    params: a tree of arrays (or anything with a ``shape``).
    dimension_numbers: the layouts the caller declares, see
      :func:`default_param_labels`.

  Returns:
    A tree like ``params`` of the four labels.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import stateless_param_labels
    >>> params = {
    ...     "embed": {"embedding": jnp.zeros((10, 4))},
    ...     "mlp": {"kernel": jnp.zeros((4, 8))},
    ...     "norm": {"scale": jnp.ones(4)},
    ...     "lm_head": {"kernel": jnp.zeros((4, 10))},
    ...     "conv": {"kernel": jnp.zeros((3, 3, 4, 8))},  # nothing declared
    ... }
    >>> print(stateless_param_labels(params))
    {'conv': {'kernel': 'vector'}, 'embed': {'embedding': 'embedding'}, 'lm_head': {'kernel': 'head'}, 'mlp': {'kernel': 'multinorm'}, 'norm': {'scale': 'vector'}}
  """

  def label(path, leaf, declared) -> str:
    parts = [jax.tree_util.keystr((k,), simple=True).lower() for k in path]
    if len(getattr(leaf, "shape", ())) < 2 or any(
      p in _VECTOR_NAMES or any(s in p for s in _VECTOR_SUBSTRINGS)
      for p in parts
    ):
      return VECTOR
    if any(
      p in _EMBEDDING_NAMES or any(s in p for s in _EMBEDDING_SUBSTRINGS)
      for p in parts
    ):
      return EMBEDDING  # read as (tokens, features...), nothing to declare
    if matrix_layout(path, leaf, declared) is None:
      return VECTOR
    return HEAD if _is_adam_by_name(path) else MATRIX

  return _map_declared(label, params, dimension_numbers)


def sinkgd_stateless(
  learning_rate: optax.ScalarOrSchedule,
  *,
  alpha: float = 0.05,
  num_iters: int = 5,
  rest_learning_rate: optax.ScalarOrSchedule | None = None,
  weight_decay: float = 0.0,
  rest_weight_decay: float | None = None,
  weight_decay_mask: Any | Callable[[Any], Any] | None = None,
  param_labels: Any | Callable[[Any], Any] | None = None,
  dimension_numbers: mn.DimensionNumbersSpec = None,
  impl: str = "auto",
  update_scale: str = "rms",
  overflow_guard: str | None = None,
) -> optax.GradientTransformation:
  r"""SinkGD with no optimizer state at all: every group takes a normalized step.

  The paper's recipe keeps AdamW (two moments per entry) for embeddings, the
  LM head and norm scales, which at a 32K vocabulary is most of the
  optimizer's memory. Here each group gets a stateless normalization of its
  instantaneous gradient (:func:`stateless_param_labels` assigns the groups):

  - ``'multinorm'``, hidden matrices: :func:`sinkgd`'s step,
    ``W <- W - alpha eta_t (s(m, n) G_L + lambda W)`` with SR-Sinkhorn
    (``L = num_iters``) and ``s`` the ``update_scale`` rule.
  - ``'embedding'``, a table with the token axis first, ``(vocab, d)``
    (Flax's ``nnx.Embed`` and PyTorch's ``nn.Embedding`` alike; other axes
    are flattened into ``d``): each token's vector is scaled to l2 norm
    ``sqrt(d)`` (:func:`row_l2` with the token axis as the rows, read in
    place, no transpose: RMS 1 per token), ``E_v <- E_v - rho_t sqrt(d) G_v
    / ||G_v||``. Tokens absent from the batch have a zero gradient row and
    stay exactly unchanged, as they would under AdamW's first step; a
    normalization over the whole table would instead let frequent tokens
    set the scale of rare ones.
  - ``'head'``, the LM head: SR-Sinkhorn, as the hidden matrices, at the
    second learning rate. Column normalization alone (one scale per input
    feature over the vocabulary) would keep each token's row at the size of
    its softmax gradient, which shrinks with the token's probability, so
    rare tokens would barely move; SR-Sinkhorn's row step gives every
    token's row about the same size, as AdamW's per-entry normalization does.
  - ``'vector'``, norm scales, biases, scalars: ``-rho_t sign(g)``
    (``optax.scale_by_sign``). It is AdamW's step with ``b1 = b2 = 0``
    (Adam without its moments), RMS 1 on the entries with non-zero
    gradient; a whole-vector RMS normalization would let the one large entry
    of a norm scale's gradient set the step of all others.

  ``rho_t`` is ``rest_learning_rate`` (default ``learning_rate``): the
  embedding, head and vector groups share it, so it is tuned like the AdamW
  group's lr of :func:`sinkgd`. Weight decay (``weight_decay`` for the
  hidden matrices, ``rest_weight_decay``, default ``weight_decay``, for the
  rest, times each group's lr) acts where ``weight_decay_mask`` (default
  :func:`default_weight_decay_mask`: not on vectors and embeddings) is True.

  Args:
    learning_rate: ``eta``, a float or an optax schedule.
    alpha: scale of the hidden matrices' step relative to ``eta`` (0.05).
    num_iters: ``L``, SR-Sinkhorn rounds (hidden matrices and the head).
    rest_learning_rate: ``rho``, the embedding, head and vector groups' lr.
    weight_decay: decoupled weight decay of the hidden matrices.
    rest_weight_decay: decoupled weight decay of the other groups.
    weight_decay_mask: see :func:`sinkgd`.
    param_labels: a tree of ``'multinorm'``/``'embedding'``/``'head'``/
      ``'vector'`` labels like the params, or a callable ``params ->
      labels``; default :func:`stateless_param_labels`.
    dimension_numbers: fan_in/fan_out axes of the hidden matrices and the
      head, see :func:`multinorm`.
    impl: SR-Sinkhorn implementation, see :func:`scale_by_sinkgd`.
    update_scale: the hidden matrices' rule, see :func:`sinkgd`.
    overflow_guard: SR-Sinkhorn's guard for the hidden matrices and the
      head, see :func:`scale_by_sinkgd`. None (default):
      ``"on_demand"``, no ``max |G|`` read unless a sum of squares over- or
      underflows (the same update up to float32 rounding, no state; the
      head's SR-Sinkhorn takes about 0.4x the time of ``"max_abs"`` on a
      CPU), or ``"max_abs"``, :func:`sinkgd`'s default, with
      ``impl="reference"`` (:func:`stateless_overflow_guard`).

  Returns:
    An ``optax.GradientTransformation`` whose state holds no arrays but the
    step count of each group whose learning rate is a schedule.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from multinorm_optax import sinkgd_stateless
    >>> params = {
    ...     "embed": {"embedding": jnp.zeros((10, 4))},
    ...     "mlp": {"kernel": jnp.ones((4, 8))},
    ...     "norm": {"scale": jnp.ones(4)},
    ... }
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> grads["embed"]["embedding"] = grads["embed"]["embedding"].at[3:].set(0)
    >>> opt = sinkgd_stateless(learning_rate=1e-2, rest_learning_rate=1e-3)
    >>> state = opt.init(params)
    >>> print(jax.tree.leaves(state))  # constant lrs: no state at all
    []
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> print(updates["norm"]["scale"])  # -rho * sign(g)
    [-0.001 -0.001 -0.001 -0.001]
    >>> # Tokens 0-2 had gradient: RMS rho each; the others did not move.
    >>> e = updates["embed"]["embedding"]
    >>> print(jnp.sqrt(jnp.mean(e**2, axis=1)).round(6))
    [0.001 0.001 0.001 0.    0.    0.    0.    0.    0.    0.   ]
    >>> print(round(float(jnp.sqrt(jnp.mean(updates["mlp"]["kernel"] ** 2))), 6))
    0.0005
  """
  mask = _within_group(
    default_weight_decay_mask
    if weight_decay_mask is None
    else weight_decay_mask
  )
  rest_lr = learning_rate if rest_learning_rate is None else rest_learning_rate
  rest_wd = weight_decay if rest_weight_decay is None else rest_weight_decay

  def step(normalize, wd, lr):
    return optax.chain(
      normalize,
      optax.add_decayed_weights(wd, mask),
      optax.scale_by_learning_rate(lr),
    )

  def sinkhorn():
    return mn.scale_by_sinkgd(
      num_iters,
      dimension_numbers=dimension_numbers,
      impl=impl,
      overflow_guard=stateless_overflow_guard(impl)
      if overflow_guard is None
      else overflow_guard,
    )

  def token_rows(name, leaf):  # the token axis as the rows: no transpose
    del name
    return DimensionNumbers(tuple(range(1, leaf.ndim)), 0)

  groups = {
    MATRIX: step(
      with_update_scale(sinkhorn(), update_scale, dimension_numbers),
      weight_decay,
      _times(alpha, learning_rate),
    ),
    EMBEDDING: step(
      mn.multinorm([norms.row_l2], 1, dimension_numbers=token_rows),
      rest_wd,
      rest_lr,
    ),
    HEAD: step(sinkhorn(), rest_wd, rest_lr),
    VECTOR: step(optax.scale_by_sign(), rest_wd, rest_lr),
  }
  if param_labels is None:
    param_labels = functools.partial(
      stateless_param_labels, dimension_numbers=dimension_numbers
    )
  return optax.partition(groups, param_labels)
