"""Layout: where a parameter's fan_in and fan_out axes are, and the canonical view.

The paper writes a weight gradient as ``G`` of shape ``(m, n) = (fan_out,
fan_in)``; Flax stores a Dense kernel as ``(fan_in, fan_out)``, its transpose.
The order of SinkGD's normalizations (rows first, columns last) is defined on
the paper's layout, so mixing the two up changes the result. This module is
the only place that maps a parameter of any shape to the canonical view
``(*batch, m, n)`` and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

Axes = int | Sequence[int]


class DimensionNumbers(NamedTuple):
  """Which axes of a parameter are fan_in (reduction) and fan_out (output).

  All other axes are batch axes: each slice along them is normalized as its
  own matrix. The default, ``DimensionNumbers(0, 1)``, is a Flax kernel
  ``(fan_in, fan_out)``. Examples:

  - scanned layers or MoE experts ``(layers, in, out)``: ``DimensionNumbers(1, 2)``;
  - attention kernel ``(d_model, heads, head_dim)``: ``DimensionNumbers(0, (1, 2))``;
  - attention output ``(heads, head_dim, d_model)``: ``DimensionNumbers((0, 1), 2)``;
  - conv kernel ``(h, w, in, out)``: ``DimensionNumbers((0, 1, 2), 3)``;
  - a PyTorch-style ``(out, in)`` matrix: ``DimensionNumbers(1, 0)``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import multinorm_optax as mno
    >>> g = jax.random.normal(jax.random.key(0), (6, 4))  # Flax (in, out)
    >>> flax_tx = mno.scale_by_sinkgd()
    >>> torch_tx = mno.scale_by_sinkgd(dimension_numbers=mno.DimensionNumbers(1, 0))
    >>> u, _ = flax_tx.update(g, flax_tx.init(g))
    >>> u_t, _ = torch_tx.update(g.T, torch_tx.init(g.T))  # (out, in)
    >>> print(bool(jnp.allclose(u_t, u.T)))
    True
  """

  reduction_axis: Axes = 0
  output_axis: Axes = 1


def default_dimension_numbers(shape: Sequence[int]) -> DimensionNumbers | None:
  """Flax's convention: the last two axes are ``(fan_in, fan_out)``.

  Leading axes (stacked layers, experts) are batch axes. Leaves with fewer than
  two axes are not matrices: None.
  """
  if len(shape) < 2:
    return None
  return DimensionNumbers(len(shape) - 2, len(shape) - 1)


def _as_tuple(axes: Axes) -> tuple[int, ...]:
  return (axes,) if isinstance(axes, int) else tuple(axes)


class CanonicalLayout(NamedTuple):
  """How a parameter of ``shape`` maps to ``(*batch_shape, m, n)``."""

  shape: tuple[int, ...]
  batch_axes: tuple[int, ...]
  output_axes: tuple[int, ...]
  reduction_axes: tuple[int, ...]

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.batch_axes)

  @property
  def m(self) -> int:
    return math.prod(self.shape[a] for a in self.output_axes)

  @property
  def n(self) -> int:
    return math.prod(self.shape[a] for a in self.reduction_axes)

  @property
  def permutation(self) -> tuple[int, ...]:
    return self.batch_axes + self.output_axes + self.reduction_axes


def canonical_layout(
  shape: Sequence[int],
  dimension_numbers: DimensionNumbers,
  name: str = "parameter",
) -> CanonicalLayout:
  """Validates ``dimension_numbers`` against ``shape``.

  Raises:
    ValueError: naming ``name`` and ``shape`` when an axis is out of range,
      repeated, or when either side is empty.
  """
  shape = tuple(shape)
  ndim = len(shape)

  def normalize(axes: Axes, what: str) -> tuple[int, ...]:
    out = []
    for a in _as_tuple(axes):
      if not isinstance(a, int) or not -ndim <= a < ndim:
        raise ValueError(
          f"{name} with shape {shape}: {what} axis {a!r} is out of range for "
          f"{ndim} dimensions ({dimension_numbers})"
        )
      out.append(a % ndim)
    if not out:
      raise ValueError(
        f"{name} with shape {shape}: no {what} axis in {dimension_numbers}"
      )
    return tuple(out)

  reduction = normalize(dimension_numbers.reduction_axis, "reduction")
  output = normalize(dimension_numbers.output_axis, "output")
  named = reduction + output
  if len(set(named)) != len(named):
    raise ValueError(
      f"{name} with shape {shape}: an axis is repeated in {dimension_numbers}"
    )
  batch = tuple(a for a in range(ndim) if a not in named)
  return CanonicalLayout(shape, batch, output, reduction)


def to_canonical(x: jax.Array, layout: CanonicalLayout) -> jax.Array:
  """``x`` as ``(*batch, m, n)``: batch axes first, then fan_out, then fan_in."""
  perm = layout.permutation
  if perm != tuple(range(x.ndim)):
    x = jnp.transpose(x, perm)
  # A reshape that merges sharded axes can force a relayout; only merge when
  # the spec really has several output or reduction axes.
  if len(layout.output_axes) > 1 or len(layout.reduction_axes) > 1:
    x = x.reshape(layout.batch_shape + (layout.m, layout.n))
  return x


def from_canonical(x: jax.Array, layout: CanonicalLayout) -> jax.Array:
  """Inverse of :func:`to_canonical`."""
  if len(layout.output_axes) > 1 or len(layout.reduction_axes) > 1:
    x = x.reshape(tuple(layout.shape[a] for a in layout.permutation))
  perm = layout.permutation
  if perm != tuple(range(x.ndim)):
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
      inverse[p] = i
    x = jnp.transpose(x, inverse)
  return x


def map_batch(fn, x: jax.Array, num_batch_axes: int) -> jax.Array:
  """Applies ``fn`` (one matrix -> one matrix) to every matrix of ``x``.

  ``vmap`` once per batch axis rather than a reshape to one batch axis, so a
  batch axis that is sharded stays sharded and never needs a relayout.
  """
  for _ in range(num_batch_axes):
    fn = jax.vmap(fn)
  return fn(x)
