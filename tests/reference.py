"""Independent references, written from the papers' equations in numpy float64.

They work on the paper's layout: a gradient G of shape (m, n) = (fan_out, fan_in).
"""

import numpy as np


def sr_sinkhorn(g: np.ndarray, num_iters: int) -> np.ndarray:
  """SinkGD's Algorithm 3: L rounds of rows to norm sqrt(n), then columns to sqrt(m)."""
  x = np.asarray(g, np.float64)
  m, n = x.shape
  for _ in range(num_iters):
    x = np.sqrt(n) * x / np.linalg.norm(x, axis=1, keepdims=True)
    x = np.sqrt(m) * x / np.linalg.norm(x, axis=0, keepdims=True)
  return x


def grad_norm(g: np.ndarray) -> np.ndarray:
  """SWAN's GradNorm: each row minus its mean, over its (population) std."""
  x = np.asarray(g, np.float64)
  centered = x - x.mean(axis=1, keepdims=True)
  return centered / centered.std(axis=1, keepdims=True)


def grad_whitening(g: np.ndarray) -> np.ndarray:
  """(G G^T)^{-1/2} G by eigendecomposition (pseudo-inverse on the null space)."""
  x = np.asarray(g, np.float64)
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  # Singular values below float32 resolution are rounding noise in a rank-deficient G.
  keep = s > s.max() * 1e-5
  return u[:, keep] @ vt[keep]


def swan(g: np.ndarray, rescale: bool = True) -> np.ndarray:
  """GradWhitening(GradNorm(G)), optionally rescaled to the Frobenius norm of GradNorm(G)."""
  normed = grad_norm(g)
  x = grad_whitening(normed)
  return x * np.linalg.norm(normed) / np.linalg.norm(x) if rescale else x
