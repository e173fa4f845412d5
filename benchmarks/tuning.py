"""Tuning an optimizer's learning rates: its grid, the points past an edge
of it, and the sweep (convergence.py's phase 1).

A grid is a 1-D grid over lr, or for two lr groups a 2-D grid over lr x
adam_lr (the hidden matrices' lr x the lr of the AdamW group: embeddings,
head, norms). When the best point (lowest final validation loss) sits on an
edge of its grid along an axis, one point past that edge (one grid step
further, the other lr kept) is run, until the best is inside or the limit of
added points is reached. An axis with one point is not a sweep: a one-point
grid has no edges and is never extended.
"""

from __future__ import annotations

import multinorm_optax as mo
from benchmarks.sweep import Runner, final_loss

# (lr grid, adam-lr grid). Centred on the best points of earlier sweeps (one-group
# AdamW 1e-3; two-group AdamW (1e-3, 3e-2); sinkgd/swan 3e-2 with the AdamW group at
# the same lr); grid steps ~3x. For sinkgd/swan the matrices step alpha * lr.
DEFAULT_GRIDS = {
  "adamw": ((3e-4, 1e-3, 3e-3), None),
  "adamw2": ((3e-4, 1e-3, 3e-3), (1e-2, 3e-2, 0.1)),
  "sinkgd": ((1e-2, 3e-2, 0.1), (1e-2, 3e-2, 0.1)),
  "swan": ((1e-2, 3e-2, 0.1), (1e-2, 3e-2, 0.1)),
  "sinkgd_mom": ((1e-2, 3e-2, 0.1), (1e-2, 3e-2, 0.1)),
  "sinkgd_mom_post": ((1e-2, 3e-2, 0.1), (1e-2, 3e-2, 0.1)),
  "muon": ((0.01, 0.02, 0.05), (3e-3, 1e-2, 3e-2)),
  "adafactor": ((3e-3, 1e-2, 3e-2), None),
  "sgd": ((0.1, 0.3, 1.0), None),
  # Its embedding/head/norm steps have RMS 1 (sign, per-token, SR-Sinkhorn),
  # larger than AdamW's once its moments average: a lower second lr.
  "sinkgd_stateless": ((1e-2, 3e-2, 0.1), (3e-3, 1e-2, 3e-2)),
}


def recentred(lrs: tuple[float, ...], rule: str) -> tuple[float, ...]:
  """`lrs` of an RMS-1 rule, divided by `rule`'s factor at the tiny model's
  (d_model, d_model) = (128, 128) matrices (6 of its 7 per block; down_proj's
  is smaller), so that the grid's centre takes the same step; 3 digits."""
  factor = mo.update_scale_factor(rule, 128, 128)
  return tuple(float(f"{x / factor:.3g}") for x in lrs)


DEFAULT_GRIDS |= {
  "sinkgd_spectral": (
    recentred(DEFAULT_GRIDS["sinkgd"][0], "spectral"),
    DEFAULT_GRIDS["sinkgd"][1],
  ),
  "sinkgd_mup": (
    recentred(DEFAULT_GRIDS["sinkgd"][0], "mup"),
    DEFAULT_GRIDS["sinkgd"][1],
  ),
  "swan_spectral": (
    recentred(DEFAULT_GRIDS["swan"][0], "spectral"),
    DEFAULT_GRIDS["swan"][1],
  ),
}


def _geometric_step(values: list[float]) -> float:
  values = sorted(set(values))
  if len(values) < 2:
    return 3.0
  return min(b / a for a, b in zip(values, values[1:]))


def edges(runs: list[dict], best: dict) -> list[str]:
  """The sides ("lr low", "adam_lr high", ...) on which `best` is the last point of
  its line through the grid: no run with the same other lr lies beyond it. A
  line of one point is no sweep, and has no edge."""
  out = []
  for axis, other in (("lr", "adam_lr"), ("adam_lr", "lr")):
    if best[axis] is None:
      continue
    line = [r[axis] for r in runs if r[other] == best[other]]
    if len(set(line)) < 2:
      continue
    if best[axis] <= min(line):
      out.append(f"{axis} low")
    if best[axis] >= max(line):
      out.append(f"{axis} high")
  return out


def next_point(runs: list[dict]) -> tuple[float, float | None] | None:
  """The point one grid step past the best run's edge, or None if it is inside.

  The step is the grid's smallest ratio between neighbouring values on that axis."""
  best = min(runs, key=final_loss)
  for side in edges(runs, best):
    axis, where = side.split()
    ratio = _geometric_step([r[axis] for r in runs])
    value = best[axis] / ratio if where == "low" else best[axis] * ratio
    point = {"lr": best["lr"], "adam_lr": best["adam_lr"], axis: value}
    key = (point["lr"], point["adam_lr"])
    if key not in {(r["lr"], r["adam_lr"]) for r in runs}:
      return key
  return None


def tune(run: Runner, variant: str, grid, seed: int, corpus: str, limit: int):
  """Every point of `grid` = (lrs, adam_lrs or None), then points past the edges
  (`next_point`), at most `limit` of them. Returns (runs, best, edge flags).

  `run`: a `benchmarks.sweep.Runner`."""
  lrs, adam_lrs = grid
  runs = [
    run(variant, lr, alr, seed, corpus)
    for lr in lrs
    for alr in (adam_lrs or (None,))
  ]
  runs = [r for r in runs if r is not None]  # None: not stored (--cached-only)
  for _ in range(limit):
    point = next_point(runs) if runs else None
    if point is None or (r := run(variant, *point, seed, corpus)) is None:
      break
    runs.append(r)
  if not runs:
    return [], None, []
  best = min(runs, key=final_loss)
  return runs, best, edges(runs, best)
