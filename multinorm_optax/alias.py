"""The paper's full optimizers: normalized updates for hidden matrices, AdamW for the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from multinorm_optax import multinorm as mn

MATRIX = "multinorm"
ADAM = "adam"

# Path components that mark a parameter for AdamW whatever its shape: the
# paper's recipe normalizes hidden weight matrices only.
_ADAM_SUBSTRINGS = ("embed", "lm_head", "norm", "bias")
_ADAM_NAMES = frozenset(
  {"head", "wte", "wpe", "output", "logits", "scale", "classifier"}
)


def default_param_labels(params) -> Any:
  """Labels each leaf ``'multinorm'`` (hidden matrices) or ``'adam'`` (the rest).

  A leaf goes to AdamW when it has fewer than two axes (biases, norm scales,
  scalars), or when a component of its path names an embedding, the LM head,
  a norm or a bias: a component containing one of ``embed, lm_head, norm,
  bias``, or equal to one of ``head, wte, wpe, output, logits, scale,
  classifier`` (case-insensitive). Everything else with two or more axes is a
  hidden matrix.

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import default_param_labels
    >>> params = {
    ...     "embed": jnp.zeros((10, 4)),
    ...     "mlp": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
    ...     "norm": {"scale": jnp.ones(4)},
    ... }
    >>> print(default_param_labels(params))
    {'embed': 'adam', 'mlp': {'bias': 'adam', 'kernel': 'multinorm'}, 'norm': {'scale': 'adam'}}
  """

  def label(path, leaf) -> str:
    if len(getattr(leaf, "shape", ())) < 2:
      return ADAM
    for key in path:
      part = jax.tree_util.keystr((key,), simple=True).lower()
      if part in _ADAM_NAMES or any(s in part for s in _ADAM_SUBSTRINGS):
        return ADAM
    return MATRIX

  return jax.tree_util.tree_map_with_path(label, params)


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
) -> optax.GradientTransformation:
  """Partitions the tree: matrices get ``-alpha*lr * (normalized g + wd * p)``, the rest AdamW.

  Weight decay acts only where ``weight_decay_mask`` (default
  :func:`default_weight_decay_mask`) is True, in both groups.
  """
  mask = _within_group(
    default_weight_decay_mask
    if weight_decay_mask is None
    else weight_decay_mask
  )
  matrices = optax.chain(
    scale_by_normalization,
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
    learning_rate: ``eta``, a float or an optax schedule.
    alpha: the paper's scale of the normalized update relative to Adam's lr (0.05).
    num_iters: ``L``, SR-Sinkhorn rounds (5).
    weight_decay: decoupled weight decay ``lambda`` for the matrices.
    weight_decay_mask: a tree of booleans like the params, or a callable
      ``params -> booleans``: where weight decay applies (both groups);
      default :func:`default_weight_decay_mask`.
    param_labels: a tree of ``'multinorm'``/``'adam'`` labels like the params,
      or a callable ``params -> labels``; default :func:`default_param_labels`.
    dimension_numbers: fan_in/fan_out axes of the matrices, see :func:`multinorm`.
    impl: SR-Sinkhorn implementation, see :func:`scale_by_sinkgd`.

  Returns:
    An ``optax.GradientTransformation``; its only state is AdamW's for the
    ``'adam'`` leaves and step counts.

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
    mn.scale_by_sinkgd(
      num_iters, dimension_numbers=dimension_numbers, impl=impl
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
    param_labels=param_labels,
  )


def swan(
  learning_rate: optax.ScalarOrSchedule,
  *,
  alpha: float = 0.05,
  ns_steps: int | None = None,
  rescale: bool = True,
  whiten_mode: str = "fast",
  weight_decay: float = 0.0,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.999,
  adam_eps: float = 1e-8,
  adam_weight_decay: float | None = None,
  weight_decay_mask: Any | Callable[[Any], Any] | None = None,
  param_labels: Any | Callable[[Any], Any] | None = None,
  dimension_numbers: mn.DimensionNumbersSpec = None,
) -> optax.GradientTransformation:
  r"""SWAN (Ma et al., 2024, arXiv 2412.13148) with the same recipe as :func:`sinkgd`.

  Hidden matrices: ``W <- W - alpha * eta * (swan(G) + lambda W)`` with
  :func:`scale_by_swan` (GradNorm, then GradWhitening by ``ns_steps``
  iterations of ``whiten_mode``, see :func:`whiten`; rescaled to RMS 1 when
  ``rescale``); the rest AdamW.

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
    mn.scale_by_swan(
      ns_steps=ns_steps,
      rescale=rescale,
      dimension_numbers=dimension_numbers,
      whiten_mode=whiten_mode,
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
    param_labels=param_labels,
  )
