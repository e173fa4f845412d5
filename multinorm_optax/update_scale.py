r"""Shape-dependent step sizes for normalized matrix updates.

SinkGD's and SWAN's updates have RMS 1 whatever the matrix's shape, so the
learning rate fixes each entry's step. The "spectral condition" for feature
learning (Yang, Simon and Bernstein, 2023) asks instead that the operator norm
of a layer's update scale as ``sqrt(fan_out / fan_in)``, so that the change of
its output is of the size of its output at every width. This module turns an
RMS-1 update ``U`` of shape ``(m, n) = (fan_out, fan_in)`` into ``s(m, n) U``.

With ``r = ||U||_F^2 / ||U||_op^2`` the stable rank of ``U`` (``1 <= r <=
min(m, n)``), ``||U||_F = sqrt(mn)`` gives ``||U||_op = sqrt(mn / r)``, so the
factor that makes ``||s U||_op = sqrt(m / n)`` is

.. math:: s = \sqrt{m/n} \,/\, \sqrt{mn/r} = \sqrt{r} / n .

A rule fixes ``r`` from the shape alone (no pass over the update):

- ``"rms"``: ``s = 1``, the paper's RMS-1 update (the default).
- ``"spectral"``: a flat spectrum, ``r = min(m, n)``:
  ``s = sqrt(min(m, n)) / n = sqrt(m / n) / sqrt(max(m, n))``. Exact for a
  whitened update of full rank (every singular value of an RMS-1 whitened
  ``U`` is ``sqrt(max(m, n))``). SWAN's row standardization centres each
  row, so when ``n <= m`` its rank is ``n - 1`` and its operator norm is
  ``sqrt(n / (n - 1))`` larger (3% at ``n = 16``, under 0.1% from ``n =
  512``). SinkGD's update keeps much of the gradient's uneven spectrum, so
  ``min(m, n)`` overestimates its ``r``: its operator norm is larger than
  ``sqrt(m / n)``, by up to ``sqrt(min(m, n))``.
- ``"mup"``: a rank-one update, ``r = 1``: ``s = 1 / n = 1 / fan_in``.
  The operator norm is then exactly ``sqrt(m / n)`` for a rank-one gradient
  (SR-Sinkhorn keeps a rank-one gradient rank one) and at most that
  otherwise. It is muP's rule for hidden matrices under Adam (Yang et al.,
  2022: learning rate ``~ 1 / fan_in``), whose update entries all have about
  the same size, as SinkGD's do.

Which rule makes the best learning rate independent of width is an
empirical question: ``benchmarks/width_transfer.py`` measures it.

The factors are not normalized to 1 at any reference shape: a reference
width would be arbitrary, so learning rates are not comparable across rules.
To keep the step of the ``"rms"`` rule on a matrix of shape ``(m, n)``,
divide its learning rate by ``s(m, n)``.

Not offered: a rule matching AdamW's typical update RMS (0.2, as Moonlight's
Muon does). Moonlight scales an orthogonalized update, whose RMS is
``1 / sqrt(max(m, n))``, by ``0.2 sqrt(max(m, n))``; our updates already have
RMS 1, so that rule is the constant 0.2, a learning rate and not a shape rule.

References:
  Yang, Simon, Bernstein, *A Spectral Condition for Feature Learning*, 2023,
  arXiv 2310.17813.
  Yang et al., *Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
  Hyperparameter Transfer*, 2022, arXiv 2203.03466.
"""

from __future__ import annotations

import math

import optax

from multinorm_optax import multinorm as mn

UPDATE_SCALES = ("rms", "spectral", "mup")


def update_scale_factor(rule: str, m: int, n: int) -> float:
  r"""The factor ``s(m, n)`` of ``rule`` for a ``(fan_out, fan_in) = (m, n)`` matrix.

  .. math::
     s_{rms} = 1, \quad
     s_{spectral} = \sqrt{\min(m, n)} / n, \quad
     s_{mup} = 1 / n

  Args:
    rule: ``"rms"``, ``"spectral"`` or ``"mup"`` (``UPDATE_SCALES``).
    m: fan_out, the matrix's rows in the paper's layout.
    n: fan_in, its columns.

  Returns:
    The float ``s(m, n)``.

  Raises:
    ValueError: for an unknown ``rule``.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742. (RMS-1 updates)
    Yang, Simon, Bernstein, *A Spectral Condition for Feature Learning*,
    2023, arXiv 2310.17813.

  Examples:
    >>> from multinorm_optax import update_scale_factor
    >>> print(update_scale_factor("spectral", 512, 128))  # 1 / sqrt(128)
    0.08838834764831845
    >>> print(update_scale_factor("spectral", 128, 512))  # sqrt(128) / 512
    0.02209708691207961
    >>> print(update_scale_factor("mup", 128, 512))
    0.001953125
  """
  if rule == "rms":
    return 1.0
  if rule == "spectral":
    return math.sqrt(min(m, n)) / n
  if rule == "mup":
    return 1.0 / n
  raise ValueError(
    f"update_scale: unknown rule {rule!r}; choose one of {UPDATE_SCALES}"
  )


def scale_by_shape(
  rule: str = "spectral",
  *,
  dimension_numbers: mn.DimensionNumbersSpec = None,
) -> optax.GradientTransformation:
  r"""Scales every matrix's update by :func:`update_scale_factor` of its shape.

  .. math:: U \leftarrow s(m, n)\, U

  with ``m = fan_out`` and ``n = fan_in`` read from ``dimension_numbers``
  (the same spec as :func:`multinorm`; leading batch axes, e.g. stacked
  layers, share one factor). Meant to follow an RMS-1 normalization, e.g.
  ``optax.chain(scale_by_sinkgd(), scale_by_shape("spectral"))``. The state
  is empty.

  Args:
    rule: ``"rms"``, ``"spectral"`` or ``"mup"``, see the module docstring.
    dimension_numbers: see :func:`multinorm`.

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742. (RMS-1 updates)
    Yang, Simon, Bernstein, *A Spectral Condition for Feature Learning*,
    2023, arXiv 2310.17813.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import multinorm_optax as mno
    >>> tx = optax.chain(mno.scale_by_swan(whiten_mode="exact"),
    ...                  mno.scale_by_shape("spectral"))
    >>> g = {"kernel": jax.random.normal(jax.random.key(0), (64, 16))}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> # Flax (fan_in, fan_out) = (64, 16): operator norm sqrt(16 / 64).
    >>> print(round(float(jnp.linalg.norm(u["kernel"], ord=2)), 3))
    0.5
  """
  update_scale_factor(rule, 1, 1)  # refuse an unknown rule now

  def scale_leaf(g, layout):
    return g * update_scale_factor(rule, layout.m, layout.n)

  return mn.per_matrix_transform(scale_leaf, dimension_numbers)
