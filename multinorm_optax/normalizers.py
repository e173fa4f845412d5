"""Normalizers: projections of one gradient matrix onto the sphere of one norm.

Every function here takes a gradient in the paper's canonical view, an array of
shape ``(..., m, n)`` with ``m = fan_out`` rows and ``n = fan_in`` columns (any
leading axes are batch axes and are normalized independently), and returns an
array of the same shape and dtype. The math is computed in float32 whatever the
input dtype.

Each normalizer ``P`` is positively homogeneous of degree zero,
``P(c * G) = P(G)`` for ``c > 0``, which is what lets :func:`multinorm` rescale
a gradient once before alternating them (see ``multinorm.py``). A row, column
or matrix that is entirely zero has no direction to project; it stays zero
(no NaN, no Inf) rather than being inflated.

These are the paper's normalizations (Scetbon et al., 2025, arXiv 2502.06742,
and SWAN, Ma et al., 2024, arXiv 2412.13148). Any user function with the same
contract can be passed to :func:`multinorm_optax.multinorm` next to them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from multinorm_optax import _sharding

Array = jax.Array


def _f32(g: Array) -> Array:
  return g.astype(jnp.promote_types(g.dtype, jnp.float32))


def safe_ratio(target, norm: Array) -> Array:
  """``target / norm`` where ``norm > 0``, else 0 (a zero slice stays zero)."""
  positive = norm > 0
  return jnp.where(positive, target / jnp.where(positive, norm, 1.0), 0.0)


def sqrt0(s: Array) -> Array:
  """``sqrt(s)`` for ``s >= 0``, with a zero (not infinite) gradient at ``s = 0``.

  A zero row, column or matrix then stays zero under ``jax.grad`` too: the
  plain ``sqrt`` would turn its zero cotangent into ``0 * inf = NaN``, which
  spreads to every entry through the shared scaling vectors.
  """
  positive = s > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def to_unit_max(x: Array, amax: Array) -> Array:
  r"""``x`` scaled by an exact power of two so that ``max |x|`` lies in ``[1/2, 1)``.

  .. math:: x \cdot 2^{-e}, \qquad \max|x| = f \cdot 2^{e},\ f \in [1/2, 1)

  ``amax`` is ``max |x|`` over the axes being normalized (broadcastable to
  ``x``). The factor ``2^{-e}`` is applied as two halves, each a normal
  float32 number: a reciprocal ``1 / amax``, or ``2^{-e}`` at once, is
  subnormal for ``amax >= 2^{126}`` (about 8.5e37) and flushes to zero on
  accelerators; a division by ``amax`` is turned into that multiplication by
  XLA. So every finite scale, up to float32's largest, comes out in range. A
  zero ``amax`` leaves ``x`` (zero) unchanged. The exponent carries no
  gradient: the factor is piecewise constant in ``amax``.
  """
  _, e = jnp.frexp(jax.lax.stop_gradient(amax))
  half = e // 2
  one = jnp.ones((), x.dtype)
  return x * jnp.ldexp(one, -half) * jnp.ldexp(one, half - e)


def repeat(body, num_iters, init):
  """``body(i, x)`` applied ``num_iters`` times, starting from ``x = init``.

  A Python ``int`` count unrolls the loop at trace time, so XLA can fuse
  across iterations; a traced count (a hyperparameter under
  ``optax.inject_hyperparams``) runs as one ``jax.lax.fori_loop``.
  """
  if isinstance(num_iters, int):
    x = init
    for i in range(num_iters):
      x = body(i, x)
    return x
  return jax.lax.fori_loop(0, num_iters, body, init)


def row_l2(g: Array) -> Array:
  r"""Scales every row to l2 norm ``sqrt(n)``.

  .. math:: P(G)_{i,:} = \sqrt{n}\, G_{i,:} / \lVert G_{i,:} \rVert_2

  The projection onto ``{X : ||X_{i,:}||_2 = sqrt(n) for all i}``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from multinorm_optax import row_l2
    >>> g = jnp.array([[3.0, 4.0], [1.0, 0.0]])
    >>> print(np.asarray(row_l2(g), float).round(4))
    [[0.8485 1.1314]
     [1.4142 0.    ]]
    >>> print(np.linalg.norm(np.asarray(row_l2(g), float), axis=-1).round(4))
    [1.4142 1.4142]
  """
  x = _f32(g)
  n = x.shape[-1]
  norm = sqrt0(jnp.sum(x * x, axis=-1, keepdims=True))
  return (x * safe_ratio(jnp.sqrt(jnp.float32(n)), norm)).astype(g.dtype)


def col_l2(g: Array) -> Array:
  r"""Scales every column to l2 norm ``sqrt(m)``.

  .. math:: P(G)_{:,j} = \sqrt{m}\, G_{:,j} / \lVert G_{:,j} \rVert_2

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from multinorm_optax import col_l2
    >>> g = jnp.array([[3.0, 4.0], [1.0, 0.0]])
    >>> print(np.asarray(col_l2(g), float).round(4))
    [[1.3416 1.4142]
     [0.4472 0.    ]]
  """
  x = _f32(g)
  m = x.shape[-2]
  norm = sqrt0(jnp.sum(x * x, axis=-2, keepdims=True))
  return (x * safe_ratio(jnp.sqrt(jnp.float32(m)), norm)).astype(g.dtype)


def row_standardize(g: Array) -> Array:
  r"""SWAN's GradNorm: every row to mean 0 and standard deviation 1.

  .. math:: P(G)_{i,:} = (G_{i,:} - \mu_i) / \sigma_i, \quad
     \mu_i = \tfrac1n \textstyle\sum_j G_{ij}, \quad
     \sigma_i^2 = \tfrac1n \textstyle\sum_j (G_{ij} - \mu_i)^2

  A constant row (``sigma_i = 0``) has no direction and becomes zero.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from multinorm_optax import row_standardize
    >>> g = jnp.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    >>> print(np.asarray(row_standardize(g), float).round(4))
    [[-1.2247  0.      1.2247]
     [ 0.      0.      0.    ]]
  """
  x = _f32(g)
  centered = x - jnp.mean(x, axis=-1, keepdims=True)
  std = sqrt0(jnp.mean(centered * centered, axis=-1, keepdims=True))
  return (centered * safe_ratio(1.0, std)).astype(g.dtype)


def rms(g: Array) -> Array:
  r"""Scales the whole matrix to root-mean-square 1 (Frobenius norm ``sqrt(mn)``).

  .. math:: P(G) = \sqrt{mn}\, G / \lVert G \rVert_F

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import rms
    >>> g = jnp.array([[3.0, 4.0], [1.0, 0.0]])
    >>> print(round(float(jnp.sqrt(jnp.mean(rms(g) ** 2))), 4))
    1.0
  """
  x = _f32(g)
  m, n = x.shape[-2:]
  norm = sqrt0(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
  return (x * safe_ratio(jnp.sqrt(jnp.float32(m * n)), norm)).astype(g.dtype)


def sign(g: Array) -> Array:
  r"""Elementwise sign: the projection onto the l-infinity sphere of radius 1.

  .. math:: P(G)_{ij} = \operatorname{sign}(G_{ij})

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import sign
    >>> print(sign(jnp.array([[-2.0, 0.0, 0.5]])))
    [[-1.  0.  1.]]
  """
  return jnp.sign(g)


def whiten(g: Array, *, ns_steps: int = 10) -> Array:
  r"""SWAN's GradWhitening: :math:`(G G^\top)^{-1/2} G`, by Newton-Schulz.

  For ``G = U S V^T`` (thin SVD) this is the polar factor ``U V^T``: every
  non-zero singular value becomes 1. It is computed from the Gram matrix of the
  smaller side, ``A = G G^T`` if ``m <= n`` (else ``G^T G``, using
  ``(G G^T)^{-1/2} G = G (G^T G)^{-1/2}``), with the coupled Newton-Schulz
  iteration for the inverse square root (Higham, *Functions of Matrices*, 2008,
  eq. 6.35), as SWAN does:

  .. math::
     Y_0 = A / c,\; Z_0 = I,\; c = \lVert A \rVert_F; \quad
     T_k = \tfrac12 (3I - Z_k Y_k),\; Y_{k+1} = Y_k T_k,\; Z_{k+1} = T_k Z_k

  ``Z_k -> (A/c)^{-1/2}``, so ``A^{-1/2} ~ Z_K / sqrt(c)``. Dividing by the
  Frobenius norm puts every eigenvalue in ``(0, 1]``, inside the region of
  convergence. Eigenvalues near 1 converge quadratically; an eigenvalue
  ``lambda << 1`` grows by about 2.25x per step first, so ``ns_steps=10``
  (our default, a choice: the SWAN paper does not fix a count we could verify)
  resolves condition numbers of ``A`` up to about 1e3 to better than 1e-3.
  Use ``functools.partial(whiten, ns_steps=k)`` for another count; keep
  ``k <= 20``: directions in the null space of a rank-deficient ``A`` grow by
  1.5x per step, so rounding noise there would eventually be amplified.

  The matrix products need the whole matrix; on a mesh with Explicit axes the
  computation runs with Auto axes (GSPMD chooses the collectives) and the result
  is returned with the input's sharding.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import whiten
    >>> g = jax.random.normal(jax.random.key(0), (4, 8))
    >>> w = whiten(g)  # the polar factor: orthonormal rows
    >>> print(w.shape, bool(jnp.allclose(w @ w.T, jnp.eye(4), atol=1e-3)))
    (4, 8) True
  """
  return _sharding.on_auto_axes(
    functools.partial(_whiten, ns_steps=ns_steps), g
  )


def _whiten(g: Array, *, ns_steps: int) -> Array:
  x = _f32(g)
  m, n = x.shape[-2:]
  wide = m <= n
  gram = x @ jnp.swapaxes(x, -1, -2) if wide else jnp.swapaxes(x, -1, -2) @ x
  scale = jnp.sqrt(jnp.sum(gram * gram, axis=(-2, -1), keepdims=True))
  eye = jnp.eye(gram.shape[-1], dtype=jnp.float32)
  y = gram * safe_ratio(1.0, scale)
  z = jnp.broadcast_to(eye, gram.shape)

  def step(_, yz):
    y, z = yz
    t = 0.5 * (3.0 * eye - z @ y)
    return y @ t, t @ z

  y, z = repeat(step, ns_steps, (y, z))
  inv_sqrt = z * safe_ratio(1.0, jnp.sqrt(scale))
  out = inv_sqrt @ x if wide else x @ inv_sqrt
  return out.astype(g.dtype)
