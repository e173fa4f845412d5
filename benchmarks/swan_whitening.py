r"""SWAN's whitening modes: accuracy against float64, and what accuracy training needs.

    python -m benchmarks.swan_whitening accuracy          # seconds
    python -m benchmarks.swan_whitening train             # CPU: 15 tiny runs, ~20 min

``accuracy``: at each matmul precision of ``--precisions`` (default: jax's
default; ``default,highest`` on a GPU shows what TF32 costs), for each mode of
:func:`multinorm_optax.whiten` (and each step count of ``--modes``), the singular values of the float32 output
against the float64 reference ``U V^T`` (SVD of the same float32 input; on a
rank-deficient input, ``U_r V_r^T`` over the singular values above 1e-5 of the
largest). Inputs are ``(256, 1024)`` with singular values spaced
geometrically from 1 down to ``1/cond`` (cond 1, 1e2, 1e4), and a rank-128
one. Reported: min and max singular value of the output over the reference's
range (where the reference is 1), the largest singular value on its null
space (where the reference is 0), and ``max |W - W_ref|``.

``train``: train.py's tiny model (``pretrain.trainer.train``, nothing re-implemented), the
default convergence run of benchmarks/convergence.py (400 steps of 16 x 64
tokens, --data corpus (stdlib), warmup 10% then cosine, clip 1) at SWAN's best lr
there (0.03), once per (mode, ns_steps, seed) in ``--runs``; final validation
loss. Outputs go to ``--out`` (``swan_whitening.json``, updated after every
run; a run already there for the same mode, design, steps, seed and corpus is
skipped). ``--fast-lower X`` redesigns the fast schedule for ``[X, 1]`` in
this process, to try other designs without editing the library.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import numpy as np

import multinorm_optax as mo
from benchmarks import common
from multinorm_optax import normalizers as norms

# (mode, ns_steps or None for the mode's default, seed)
DEFAULT_RUNS = [
  (mode, steps, 0)
  for mode, steps in [
    ("newton_schulz", None),
    ("exact", None),
    ("exact", 5),
    ("fast", 2),
    ("fast", 3),
    ("fast", 4),
  ]
] + [
  (mode, steps, seed)
  for seed in (1, 2)
  for mode, steps in [
    ("newton_schulz", None),
    ("exact", None),
    ("fast", 3),
    ("fast", 4),
  ]
]


def test_matrix(kind: str, m: int = 256, n: int = 1024, seed: int = 0):
  """A float32 ``(m, n)`` matrix with a known spectrum (see the module doc)."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, m)))
  if kind == "rank-deficient":
    s = np.where(np.arange(m) < m // 2, np.geomspace(1, 1e-2, m), 0.0)
  else:
    s = np.geomspace(1.0, 1.0 / float(kind), m)
  return ((u * s) @ v.T).astype(np.float32)


def polar_reference(g: np.ndarray) -> tuple[np.ndarray, int]:
  """``U_r V_r^T`` in float64 and the rank ``r`` (singular values > 1e-5 max)."""
  u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  keep = s > s.max() * 1e-5
  return u[:, keep] @ vt[keep], int(keep.sum())


def accuracy_row(g: np.ndarray, mode: str, ns_steps) -> dict:
  ref, rank = polar_reference(g)
  out = np.asarray(
    jax.jit(lambda x: mo.whiten(x, mode=mode, ns_steps=ns_steps))(g),
    np.float64,
  )
  # Singular values of the output on the reference's range and null space.
  u, _, _ = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  on_range = np.linalg.svd(u[:, :rank].T @ out, compute_uv=False)
  null = u[:, rank:].T @ out
  return {
    "sv_min": float(on_range.min()),
    "sv_max": float(on_range.max()),
    "null_sv_max": float(np.linalg.norm(null, 2)) if null.size else 0.0,
    "max_abs_err": float(np.abs(out - ref).max()),
  }


def accuracy(args, records) -> list[dict]:
  """Every (precision, mode, steps, input) row, each recorded as it is made.

  A precision is jax's default matmul precision for the whiten's products:
  "default" is TF32 on an Ampere/Hopper GPU (float32 on a CPU), "highest"
  full float32."""
  rows = []
  platform = jax.default_backend()
  for precision in args.precisions:
    for mode, steps in args.modes:
      for kind in ("1", "1e2", "1e3", "1e4", "rank-deficient"):
        row = {
          "precision": precision,
          "platform": platform,
          "mode": mode,
          "ns_steps": steps,
          "input": kind,
        }
        g = test_matrix(kind, *args.shape)
        with jax.default_matmul_precision(precision):
          row.update(accuracy_row(g, mode, steps))
        rows.append(row)
        records.write(row)
        print(
          f"| {precision} | {mode} | {steps or 'default'} | {kind} | "
          f"{row['sv_min']:.2e} | {row['sv_max']:.6f} | "
          f"{row['null_sv_max']:.1e} | {row['max_abs_err']:.1e} |",
          flush=True,
        )
  return rows


def train_runs(args) -> list[dict]:
  from pretrain.cli import parse_args
  from pretrain.trainer import train

  path = args.out / "swan_whitening.json"
  results = json.loads(path.read_text()) if path.exists() else []
  # Records from before --data existed were all trained on stdlib.
  done = {
    (r["mode"], r["lower"], r["ns_steps"], r["seed"], r.get("corpus", "stdlib"))
    for r in results
  }
  for mode, steps, seed in args.runs:
    lower, default_steps = _design(mode)
    steps = default_steps if steps is None else steps
    if (mode, lower, steps, seed, args.data) in done:
      continue
    argv = [
      "--optimizer",
      "swan",
      "--lr",
      "0.03",
      "--swan-whiten",
      mode,
      "--steps",
      "400",
      "--batch-size",
      "16",
      "--seq-len",
      "64",
      "--eval-every",
      "100",
      "--eval-batches",
      "8",
      "--seed",
      str(seed),
      "--run-dir",
      tempfile.mkdtemp(prefix="swan_whitening_"),
      "--ckpt-every",
      "0",
      "--metrics",
      "none",
      "--log-every",
      "400",
      "--no-progress",
      "--ns-steps",
      str(steps),
      "--data",
      args.data,
    ]
    summary = train(parse_args(argv))
    results.append(
      {
        "mode": mode,
        "lower": lower,
        "ns_steps": steps,
        "seed": seed,
        "corpus": args.data,
        "final_val_loss": summary["final_val_loss"],
        "evals": summary.get("evals"),
        "argv": argv,
      }
    )
    print(
      f"{mode} {steps} seed {seed} {args.data}: "
      f"{summary['final_val_loss']:.4f}",
      flush=True,
    )
    path.write_text(json.dumps(results, indent=1))
  return results


def _design(mode: str) -> tuple:
  """(design lower bound or None, default step count) of a whitening mode."""
  if mode == "newton_schulz":
    return None, norms.NEWTON_SCHULZ_STEPS
  return norms.POLAR_DESIGN[mode]


def _mode_steps(text: str) -> list:
  out = []
  for item in text.split(","):
    mode, _, steps = item.partition(":")
    out.append((mode, int(steps) if steps else None))
  return out


def _runs(text: str) -> list:
  out = []
  for item in text.split(","):
    mode, steps, seed = item.split(":")
    out.append((mode, int(steps) if steps else None, int(seed)))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("what", choices=("accuracy", "train"))
  p.add_argument(
    "--modes",
    type=_mode_steps,
    default=_mode_steps("newton_schulz,exact,exact:5,fast,fast:3,fast:2"),
    help="accuracy: mode[:ns_steps],... (default: all modes and the study's "
    "step counts)",
  )
  p.add_argument(
    "--precisions",
    type=common.csv_list,
    default=["default"],
    help="accuracy: jax matmul precisions to whiten at, e.g. default,highest "
    "(%(default)s)",
  )
  p.add_argument(
    "--shape",
    type=common.int_list,
    default=[256, 1024],
    help="accuracy: the test matrices' m,n (%(default)s)",
  )
  p.add_argument(
    "--runs",
    type=_runs,
    default=DEFAULT_RUNS,
    help="train: mode:ns_steps:seed,... (empty ns_steps: the mode's default)",
  )
  p.add_argument(
    "--data",
    default="stdlib",
    help="train: the corpus, as train.py's --data (%(default)s)",
  )
  p.add_argument(
    "--out",
    type=Path,
    default=common.RESULTS / "swan_whitening_cpu",
  )
  p.add_argument(
    "--fast-lower",
    type=float,
    default=None,
    help="redesign the fast mode's schedule for [FAST_LOWER, 1] in this "
    "process (default: the library's); the records keep the design used",
  )
  args = p.parse_args(argv)
  if args.fast_lower is not None:
    norms.POLAR_DESIGN["fast"] = (
      args.fast_lower,
      norms.POLAR_DESIGN["fast"][1],
    )
  args.out.mkdir(parents=True, exist_ok=True)
  if args.what == "accuracy":
    print(
      "| precision | mode | ns_steps | input cond | min sv | max sv | "
      "null sv | max abs err |\n|---|---|---|---|---:|---:|---:|---:|"
    )
    with common.RecordWriter(args.out / common.RECORDS) as records:
      rows = accuracy(args, records)
    (args.out / "accuracy.json").write_text(json.dumps(rows, indent=1))
  else:
    train_runs(args)


if __name__ == "__main__":
  common.run_as_script(main)
