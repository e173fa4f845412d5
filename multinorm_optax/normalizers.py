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
import math

import jax
import jax.numpy as jnp
import numpy as np

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


def _unit_rms(g: Array, axis: tuple[int, ...]) -> Array:
  r"""Every slice of ``g`` along ``axis`` scaled to root-mean-square 1.

  .. math:: P(G)_s = \sqrt{k}\, G_s / \lVert G_s \rVert_2, \quad
     k = \textstyle\prod_{a \in \text{axis}} \text{shape}_a

  The l2 norm ``sqrt(k)`` of a slice of ``k`` entries is RMS 1: rows
  (``axis=(-1,)``), columns (``(-2,)``) or whole matrices (``(-2, -1)``).
  """
  x = _f32(g)
  k = math.prod(x.shape[a] for a in axis)
  norm = sqrt0(jnp.sum(x * x, axis=axis, keepdims=True))
  return (x * safe_ratio(jnp.sqrt(jnp.float32(k)), norm)).astype(g.dtype)


def row_l2(g: Array) -> Array:
  r"""Scales every row to l2 norm ``sqrt(n)``.

  .. math:: P(G)_{i,:} = \sqrt{n}\, G_{i,:} / \lVert G_{i,:} \rVert_2

  The projection onto ``{X : ||X_{i,:}||_2 = sqrt(n) for all i}``.

  Args:
    g: the gradient, ``(..., m, n)`` in the paper's ``(fan_out, fan_in)``
      view; leading axes are batch axes, each matrix normalized on its own.

  Returns:
    An array of ``g``'s shape and dtype;
    every non-zero row of l2 norm ``sqrt(n)``.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

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
  return _unit_rms(g, axis=(-1,))


def col_l2(g: Array) -> Array:
  r"""Scales every column to l2 norm ``sqrt(m)``.

  .. math:: P(G)_{:,j} = \sqrt{m}\, G_{:,j} / \lVert G_{:,j} \rVert_2

  Args:
    g: the gradient, ``(..., m, n)`` in the paper's ``(fan_out, fan_in)``
      view; leading axes are batch axes, each matrix normalized on its own.

  Returns:
    An array of ``g``'s shape and dtype;
    every non-zero column of l2 norm ``sqrt(m)``.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from multinorm_optax import col_l2
    >>> g = jnp.array([[3.0, 4.0], [1.0, 0.0]])
    >>> print(np.asarray(col_l2(g), float).round(4))
    [[1.3416 1.4142]
     [0.4472 0.    ]]
  """
  return _unit_rms(g, axis=(-2,))


def row_standardize(g: Array) -> Array:
  r"""SWAN's GradNorm: every row to mean 0 and standard deviation 1.

  .. math:: P(G)_{i,:} = (G_{i,:} - \mu_i) / \sigma_i, \quad
     \mu_i = \tfrac1n \textstyle\sum_j G_{ij}, \quad
     \sigma_i^2 = \tfrac1n \textstyle\sum_j (G_{ij} - \mu_i)^2

  A constant row (``sigma_i = 0``) has no direction and becomes zero.

  Args:
    g: the gradient, ``(..., m, n)`` in the paper's ``(fan_out, fan_in)``
      view; leading axes are batch axes, each matrix normalized on its own.

  Returns:
    An array of ``g``'s shape and dtype;
    every non-constant row of mean 0 and standard deviation 1.

  References:
    Ma, Gong, Scetbon, Meeds, *SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training*, 2024, arXiv 2412.13148.

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

  Args:
    g: the gradient, ``(..., m, n)`` in the paper's ``(fan_out, fan_in)``
      view; leading axes are batch axes, each matrix normalized on its own.

  Returns:
    An array of ``g``'s shape and dtype;
    each non-zero matrix of root-mean-square 1.

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import rms
    >>> g = jnp.array([[3.0, 4.0], [1.0, 0.0]])
    >>> print(round(float(jnp.sqrt(jnp.mean(rms(g) ** 2))), 4))
    1.0
  """
  return _unit_rms(g, axis=(-2, -1))


def sign(g: Array) -> Array:
  r"""Elementwise sign: the projection onto the l-infinity sphere of radius 1.

  .. math:: P(G)_{ij} = \operatorname{sign}(G_{ij})

  Args:
    g: the gradient, any shape.

  Returns:
    ``sign(g)`` in ``g``'s dtype (zeros stay zero).

  References:
    Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless
    and Scalable LLM Training*, 2025, arXiv 2502.06742.

  Examples:
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import sign
    >>> print(sign(jnp.array([[-2.0, 0.0, 0.5]])))
    [[-1.  0.  1.]]
  """
  return jnp.sign(g)


WHITEN_MODES = ("fast", "exact", "newton_schulz")
# The mode of whiten, scale_by_swan and swan when none is given (newton_schulz
# before the modes existed; see whiten's docstring for why fast replaced it).
DEFAULT_WHITEN_MODE = "fast"
# Design interval [lower, 1] of the normalized singular values and the default
# step count of each polynomial mode (see ``polar_quintic_schedule``).
POLAR_DESIGN = {"fast": (1e-2, 4), "exact": (3e-3, 6)}
NEWTON_SCHULZ_STEPS = 10


def whiten(
  g: Array, *, mode: str = DEFAULT_WHITEN_MODE, ns_steps=None
) -> Array:
  r"""SWAN's GradWhitening: :math:`(G G^\top)^{-1/2} G`, the polar factor.

  For ``G = U S V^T`` (thin SVD) this is ``U V^T``: every non-zero singular
  value becomes 1. All modes work on the Gram matrix of the smaller side,
  ``A = G G^T`` (``m <= n``; else ``G^T G``, as
  ``(G G^T)^{-1/2} G = G (G^T G)^{-1/2}``), and apply the result to ``G``
  once, so the iteration costs ``O(min(m, n)^3)`` and, on a mesh, only the
  small Gram matrix crosses devices (see below).

  ``mode="fast"`` (default) and ``mode="exact"`` compute ``p(A) G`` where
  ``p`` makes every singular value ``s`` of ``G`` into ``s p(s^2)``, a
  composition of odd quintics (Newton-Schulz steps with tuned coefficients,
  :func:`polar_quintic_schedule`):

  .. math::
     B_0 = A / c,\; c = \lVert A^2 \rVert_F^{1/2} \ge \lambda_{max}(A);
     \quad Q_k = a_k I + b_k B_k + c_k B_k^2,\;
     P_{k+1} = Q_k P_k,\; B_{k+1} = P_{k+1} B_0 P_{k+1}; \quad
     W = P_K G / \sqrt{c}

  with ``P_0 = I``. This is the Newton-Schulz-type iteration
  ``X_{k+1} = a_k X_k + b_k (X_k X_k^T) X_k + c_k (X_k X_k^T)^2 X_k`` on
  ``X_k = P_k G / \sqrt c``, written on the small side: ``B_k = X_k X_k^T``,
  and everything is a polynomial in ``A`` (so it commutes). ``B_k`` is
  recomputed from ``P_k`` rather than updated, so rounding errors do not
  accumulate between ``B`` and ``P``.
  The coefficients are minimax-optimal, step by step, for normalized singular
  values in ``[lower, 1]``; singular values below ``lower`` (relative to
  ``sqrt(c)``, itself within ``min(m,n)^{1/8}`` of the largest) come out
  smaller than 1, and exact zeros stay zero. Costs below are matrix products
  of ``k x k`` matrices (``k = min(m, n)``, ``2 k^3`` flops each) beyond
  forming ``A`` and applying the result (``k^2 max(m, n)`` each):

  - ``"fast"`` (default): ``lower = 1e-2``, 4 steps, 13 products: singular
    values in the design interval come out within 1.25e-2 of 1. Chosen as the
    cheapest schedule that trains as well as this library's earlier
    ``newton_schulz`` default on both benchmark corpora (3 steps, 9
    products, is worse beyond the seed spread; docs/BENCHMARKS.md).
  - ``"exact"``: ``lower = 3e-3``, 6 steps, 21 products, every product at
    ``HIGHEST`` precision (full float32 on GPUs and TPUs too): converged to
    float32 rounding (1.5e-4) for condition numbers up to about 1e2; a float32
    Gram matrix cannot resolve singular values below ``~1e-3`` of the largest
    (its eigenvalues are ``s^2``). The price of resolving small singular
    values: the rounding noise of a null space (e.g. the all-ones direction
    that row standardization leaves in a tall matrix) is amplified to up to
    ~1e-2 of the unit singular values, so its output is not as scale
    invariant as the other modes' on rank-deficient inputs.
  - ``"newton_schulz"``: the coupled Newton-Schulz iteration for the inverse
    square root that SWAN uses (Higham, *Functions of Matrices*, 2008, eq.
    6.35) with Frobenius normalization, 10 steps, 30 products: this library's
    algorithm before the modes existed, kept to reproduce earlier runs. It
    converges linearly (1.5x per step) for small singular values: condition
    numbers above ~30 are not resolved in 10 steps.

  docs/BENCHMARKS.md ("SWAN whitening") has the measured accuracy of each
  mode against a float64 SVD reference, and what accuracy training needs.

  Args:
    g: ``(..., m, n)``.
    mode: one of ``"fast"``, ``"exact"``, ``"newton_schulz"``.
    ns_steps: iteration count; None for the mode's default. May be a traced
      integer (e.g. under ``optax.inject_hyperparams``); polynomial modes
      repeat their last (converged) coefficients past the designed schedule.

  On a mesh the small Gram matrix is constrained to be replicated, so the
  iteration runs on every device without collectives: the only collectives
  are those forming ``A`` from the local shards (an all-reduce of ``k x k``,
  plus, when the short side of ``G`` is itself sharded, an all-gather of
  ``G``'s rows over those axes only, which any method needs to take inner
  products of rows held on different devices) and applying ``p(A)`` to the
  local shard. With Explicit axes the result keeps the input's sharding.

  Returns:
    ``g``'s polar factor (to the mode's accuracy), ``g``'s shape and dtype.

  References:
    Ma, Gong, Scetbon, Meeds, *SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training*, 2024, arXiv 2412.13148.
    Amsel et al., *The Polar Express*, 2025, arXiv 2505.16932
    (the polynomial modes' coefficients).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from multinorm_optax import whiten
    >>> g = jax.random.normal(jax.random.key(0), (4, 8))
    >>> w = whiten(g)  # the polar factor: orthonormal rows, to 1.25e-2
    >>> print(w.shape, bool(jnp.allclose(w @ w.T, jnp.eye(4), atol=3e-2)))
    (4, 8) True
    >>> w = whiten(g, mode="exact")  # to float32 rounding
    >>> print(bool(jnp.allclose(w @ w.T, jnp.eye(4), atol=1e-3)))
    True
  """
  if mode not in WHITEN_MODES:
    raise ValueError(
      f"whiten: unknown mode {mode!r}; choose one of {WHITEN_MODES}"
    )
  # "exact" promises float32 accuracy on every backend: without HIGHEST, GPUs
  # multiply float32 matrices in TF32 and TPUs in one bfloat16 pass, which
  # loses the small eigenvalues of the Gram matrix (they are s^2).
  mm = functools.partial(
    jnp.matmul,
    precision=jax.lax.Precision.HIGHEST if mode == "exact" else None,
  )
  if mode == "newton_schulz":
    steps = NEWTON_SCHULZ_STEPS if ns_steps is None else ns_steps
    inverse_sqrt = functools.partial(_newton_schulz_inverse_sqrt, mm=mm)
  else:
    lower, default_steps = POLAR_DESIGN[mode]
    steps = default_steps if ns_steps is None else ns_steps
    inverse_sqrt = functools.partial(_polar_inverse_sqrt, lower=lower, mm=mm)
  return _sharding.on_auto_axes(
    lambda x: _whiten_via_gram(x, inverse_sqrt, steps, mm), g
  )


_MAX_SCHEDULE = 16  # steps tabulated for a traced count; later ones repeat


@functools.cache
def polar_quintic_schedule(lower: float, steps: int) -> tuple:
  r"""Per-step coefficients ``(a_k, b_k, c_k)`` of odd quintics for the polar factor.

  Step ``k`` maps a singular value ``x`` to ``p_k(x) = a_k x + b_k x^3 + c_k
  x^5``, chosen to minimize ``max |1 - p_k(x)|`` over the interval
  ``[l_k, u_k]`` that the previous steps leave (``[lower, 1]`` at first; then
  ``[min p_k, max p_k] = [1 - E_k, 1 + E_k]``). The minimax quintic
  equioscillates at ``l_k``, its two interior extrema and ``u_k``; it is found
  by the Remez exchange (solve the 4x4 linear system for ``a, b, c, E`` on the
  current points, move the interior points to the new extrema, repeat). The
  greedy choice is the one of Amsel et al., *The Polar Express*, 2025, arXiv
  2505.16932, derived here in float64. Once the interval has shrunk to
  rounding, the steps are the classical ``(15/8, -10/8, 3/8)`` that fix 1 to
  fifth order.

  Returns:
    A tuple of ``steps`` tuples ``(a, b, c, E)``: the coefficients and the
    largest ``|1 - x|`` over the image of ``[lower, 1]`` after that step.
  """
  out = []
  lo, hi = float(lower), 1.0
  for _ in range(steps):
    if hi - lo < 1e-7:  # converged: keep 1 a fixed point of order five
      a, b, c = 15 / 8, -10 / 8, 3 / 8
    else:
      a, b, c = _minimax_odd_quintic(lo, hi)
    grid = np.concatenate([np.geomspace(lo, hi, 4001), [lo, hi]])
    image = grid * (a + b * grid**2 + c * grid**4)
    lo, hi = float(image.min()), float(image.max())
    out.append((a, b, c, max(1 - lo, hi - 1)))
  return tuple(out)


def _minimax_odd_quintic(lo: float, hi: float) -> tuple[float, float, float]:
  """Remez exchange for ``min max_{[lo, hi]} |1 - (a x + b x^3 + c x^5)|``."""
  q, r = lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3
  sign = np.array([1.0, -1.0, 1.0, -1.0])
  for _ in range(100):
    pts = np.array([lo, q, r, hi])
    system = np.stack([pts, pts**3, pts**5, sign], axis=1)
    a, b, c, _ = np.linalg.solve(system, np.ones(4))
    # Interior extrema: p'(x) = a + 3b x^2 + 5c x^4 = 0, a quadratic in x^2.
    roots = np.roots([5 * c, 3 * b, a])
    roots = np.sort(roots[np.isreal(roots)].real)
    xs = np.sqrt(roots[roots > 0])
    xs = xs[(xs > lo) & (xs < hi)]
    if len(xs) != 2 or np.allclose(xs, (q, r), rtol=0, atol=1e-15):
      break
    q, r = xs
  return float(a), float(b), float(c)


def _whiten_via_gram(g: Array, inverse_sqrt, ns_steps, mm) -> Array:
  """``A^{-1/2} G`` (``m <= n``) or ``G A^{-1/2}``, ``A`` the smaller Gram matrix.

  ``inverse_sqrt(a, ns_steps)`` runs on every device on the whole (small,
  replicated) ``A``: the iteration has no collectives. Only forming ``A``
  touches other devices' data: ``G`` is gathered whole along its short side
  (the rows of a wide ``G``), the products are summed over its long side.
  The result is applied as ``(G + (s A^{-1/2} - I) G) / s`` with ``s^2 =
  tr(A) >= s_max^2``: the same product, but the ``G +`` term, elementwise with
  the local shard, makes GSPMD keep the input's sharding for the output (with
  Auto axes nothing else fixes it), and the scaling by ``s`` keeps the sum
  free of cancellation whatever the scale of ``G``.
  """
  x = _f32(g)
  m, n = x.shape[-2:]
  wide = m <= n
  whole = _sharding.unsharded_along(x, -2 if wide else -1)
  a = mm(whole, _t(whole)) if wide else mm(_t(whole), whole)

  def correction(a, ns_steps):
    s = jnp.sqrt(jnp.trace(a, axis1=-2, axis2=-1))[..., None, None]
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    return s * inverse_sqrt(a, ns_steps=ns_steps) - eye, safe_ratio(1.0, s)

  if isinstance(ns_steps, int):
    q, inv_s = _sharding.on_every_device(
      functools.partial(correction, ns_steps=ns_steps), a
    )
  else:  # a traced count is an argument, not a constant of the body
    q, inv_s = _sharding.on_every_device(correction, a, ns_steps)
  out = (x + (mm(q, whole) if wide else mm(whole, q))) * inv_s
  return out.astype(g.dtype)


def _polar_inverse_sqrt(a: Array, *, lower: float, ns_steps, mm) -> Array:
  """``P_K / sqrt(c)`` of :func:`whiten`'s polynomial iteration on ``A``."""
  a2 = mm(a, a)
  c2 = jnp.sqrt(jnp.sum(a2 * a2, axis=(-2, -1), keepdims=True))  # c^2
  inv_c2 = safe_ratio(1.0, c2)
  inv_c = jnp.sqrt(inv_c2)
  b, b2 = a * inv_c, a2 * inv_c2
  eye = jnp.eye(a.shape[-1], dtype=jnp.float32)

  def poly(coeffs, b, b2):
    return coeffs[0] * eye + coeffs[1] * b + coeffs[2] * b2

  if isinstance(ns_steps, int):
    # Unrolled: the first step needs no product for P (P_0 = I) and reuses
    # B_0^2; the last needs no new B.
    table = polar_quintic_schedule(lower, ns_steps)
    p = eye
    for k, coeffs in enumerate(table):
      if k:
        b2 = mm(b, b)
      q = poly(coeffs, b, b2)
      p = q if k == 0 else mm(q, p)
      if k < ns_steps - 1:
        b = mm(p, mm(a, _t(p))) * inv_c
  else:
    table = jnp.asarray(
      [row[:3] for row in polar_quintic_schedule(lower, _MAX_SCHEDULE)],
      jnp.float32,
    )

    def step(k, pb):
      p, b = pb
      q = poly(table[jnp.minimum(k, _MAX_SCHEDULE - 1)], b, mm(b, b))
      p = mm(q, p)
      return p, mm(p, mm(a, _t(p))) * inv_c

    p, _ = repeat(step, ns_steps, (jnp.broadcast_to(eye, a.shape), b))
  return p * jnp.sqrt(inv_c)


def _newton_schulz_inverse_sqrt(a: Array, *, ns_steps, mm) -> Array:
  """``A^{-1/2}`` by the coupled Newton-Schulz iteration (see :func:`whiten`)."""
  scale = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1), keepdims=True))
  eye = jnp.eye(a.shape[-1], dtype=jnp.float32)
  y = a * safe_ratio(1.0, scale)
  z = jnp.broadcast_to(eye, a.shape)

  def step(_, yz):
    y, z = yz
    t = 0.5 * (3.0 * eye - mm(z, y))
    return mm(y, t), mm(t, z)

  _, z = repeat(step, ns_steps, (y, z))
  return z * safe_ratio(1.0, jnp.sqrt(scale))


def _t(x: Array) -> Array:
  return jnp.swapaxes(x, -1, -2)
