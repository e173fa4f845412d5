r"""Convergence against the best AdamW: each optimizer tuned, then seeds x corpora.

    python benchmarks/convergence.py --in-process      # CPU default (see docs/BENCHMARKS.md)
    python benchmarks/convergence.py --optimizers adamw2,sinkgd --seeds 0 --corpora stdlib

Every run is `pretrain.trainer.train` (train.py's model, data, schedule and step; no second loop)
with the same model, batch, sequence length, steps and schedule (linear warmup over
10% of the steps, then cosine to 10% of the peak). A seed fixes the model's init, the
data order and the validation files, the same for every optimizer.

The protocol:

1. Tuning, on seed --tune-seed of the first corpus. Each optimizer runs every point
   of its grid (`DEFAULT_GRIDS`, or --lrs-NAME / --adam-lrs-NAME): a 1-D grid over
   --lr, or for two lr groups a 2-D grid over --lr x --adam-lr (the hidden matrices'
   lr x the lr of the AdamW group: embeddings, head, norms). `adamw` is plain AdamW
   (one lr for everything); `adamw2` is AdamW with the recipes' two groups, hidden
   matrices at lr and the rest at adam_lr; sinkgd and swan step their matrices
   alpha * lr along the normalized gradient (alpha 0.05). When the best point (lowest
   final validation loss) sits on an edge of its grid along an axis, one point past
   that edge (one grid step further, the other lr kept) is run, until the best is
   inside or --max-extend points were added; a best point still on an edge is
   flagged "edge" in the tables.
2. Each optimizer at its best point, on every --seeds x --corpora (the tuning run is
   reused). Ablation variants (--ablations) run at their base optimizer's best point
   on every seed of the first corpus.
3. Per corpus: mean and sample standard deviation over seeds of the final validation
   loss and of the steps to the target, the target of a seed being the final
   validation loss of the best AdamW (the kind, adamw or adamw2, with the lower mean
   final loss on that corpus) on that seed. Speedup = the best AdamW's steps to its
   own final loss / the optimizer's steps, per seed, then mean and std. Losses are
   compared per seed (a seed also picks the validation files): the difference to
   the best AdamW's final loss, mean +- std over seeds, is printed "tie" when
   |mean| <= std; so is a speedup whose mean +- std contains 1.

Runs are kept as small JSON files in OUT/runs/, named by a hash of their train.py
flags: running the command again reuses every run whose flags are unchanged, so the
phases can be run (and interrupted) separately; --cached-only reports the stored runs
without training. The key is the flags, not the code: delete OUT/runs/ to measure
changed code. Outputs in OUT: convergence.json (the
settings, machine, versions, command, tuning and final runs, summary), convergence.md
(the tables, also printed) and the plots val_loss_vs_step.png (mean +- std bands) and
lr_sweep.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform as platform_lib
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import flax
import jax
import jaxlib
import numpy as np
import optax

import multinorm_optax as mo

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/convergence.py`
  sys.path.insert(0, str(REPO))

import pretrain.cli  # noqa: E402
import pretrain.errors  # noqa: E402
import pretrain.optim  # noqa: E402
import pretrain.runtime  # noqa: E402
import pretrain.trainer  # noqa: E402
from benchmarks.step_cost import (  # noqa: E402
  csv_list,
  float_list,
  int_list,
  tree_bytes,
)
from models.llama import abstract_params  # noqa: E402
from pretrain.tokenizer import load_tokenizer  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Variant:
  """One optimizer as compared here: train.py's --optimizer and extra flags.

  `two_groups`: tuned over --adam-lr too. `base`: an ablation, run at its base
  variant's best point instead of being tuned.
  """

  optimizer: str
  two_groups: bool = False
  flags: tuple[str, ...] = ()
  base: str | None = None


VARIANTS = {
  "adamw": Variant("adamw"),
  "adamw2": Variant("adamw", two_groups=True),
  "sinkgd": Variant("sinkgd", two_groups=True),
  "swan": Variant("swan", two_groups=True),
  # muon (optax.contrib.muon) has its own AdamW group: tuned in 2-D like the rest.
  "muon": Variant("muon", two_groups=True),
  "adafactor": Variant("adafactor"),
  "sgd": Variant("sgd"),
  "sinkgd_l1": Variant("sinkgd", flags=("--num-iters", "1"), base="sinkgd"),
  "sinkgd_l2": Variant("sinkgd", flags=("--num-iters", "2"), base="sinkgd"),
  "sinkgd_reference": Variant(
    "sinkgd", flags=("--sinkgd-impl", "reference"), base="sinkgd"
  ),
  # The cheaper-step options of SR-Sinkhorn, at sinkgd's tuned point.
  "sinkgd_warm_l1": Variant(
    "sinkgd", flags=("--num-iters", "1", "--warm-start"), base="sinkgd"
  ),
  "sinkgd_guard": Variant(
    "sinkgd", flags=("--overflow-guard", "on_demand"), base="sinkgd"
  ),
  # Both cheaper-step options at once: the step that costs less than AdamW's.
  "sinkgd_fast": Variant(
    "sinkgd",
    flags=(
      "--warm-start",
      "--num-iters",
      "1",
      "--overflow-guard",
      "on_demand",
    ),
    base="sinkgd",
  ),
  # Momentum changes the effective step: tuned like sinkgd.
  "sinkgd_mom": Variant("sinkgd", two_groups=True, flags=("--momentum", "0.9")),
  "sinkgd_mom_post": Variant(
    "sinkgd",
    two_groups=True,
    flags=(
      "--momentum",
      "0.9",
      "--momentum-order",
      "average_then_normalize",
    ),
  ),
  # SWAN's whitening (default: the 4-step fast schedule): 3 steps, and the
  # other two modes (exact; newton_schulz, the default before the modes).
  "swan_ns3": Variant("swan", flags=("--ns-steps", "3"), base="swan"),
  "swan_exact": Variant("swan", flags=("--swan-whiten", "exact"), base="swan"),
  "swan_newton_schulz": Variant(
    "swan", flags=("--swan-whiten", "newton_schulz"), base="swan"
  ),
  # Options beyond the paper (multinorm_optax.update_scale, sinkgd_stateless),
  # each tuned in 2-D: a new step-size rule or recipe moves the best lrs.
  "sinkgd_spectral": Variant(
    "sinkgd", two_groups=True, flags=("--update-scale", "spectral")
  ),
  "sinkgd_mup": Variant(
    "sinkgd", two_groups=True, flags=("--update-scale", "mup")
  ),
  "swan_spectral": Variant(
    "swan", two_groups=True, flags=("--update-scale", "spectral")
  ),
  "sinkgd_stateless": Variant("sinkgd_stateless", two_groups=True),
}
ADAMW_KINDS = ("adamw", "adamw2")
DEFAULT_OPTIMIZERS = ("adamw", "adamw2", "sinkgd", "swan", "muon")
DEFAULT_ABLATIONS = (
  "sinkgd_l1",
  "sinkgd_l2",
  "sinkgd_reference",
  "swan_ns3",
  "swan_exact",
  "swan_newton_schulz",
)
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
# Run sizes per platform. The CPU one: 200 steps of the tiny model (0.2M tokens; both
# corpora hold ~30M training tokens, so no run repeats data), small enough that the
# default protocol (~75 runs) fits a 2-core machine's hour.
SIZES = {
  "cpu": {
    "model": "tiny",
    "steps": 200,
    "batch_size": 16,
    "seq_len": 64,
    "eval_every": 20,
    "eval_batches": 8,
  },
  "accelerator": {
    "model": "60m",
    "steps": 2000,
    "batch_size": 32,
    "seq_len": 256,
    "eval_every": 100,
    "eval_batches": 16,
  },
}


# ------------------------------------------------------------------ one run (child side)


def optimizer_state_bytes(args) -> tuple[int, int]:
  """(optimizer-state bytes, parameter bytes) of `args`' model and optimizer, from
  shapes alone: `jax.eval_shape` of `pretrain.optim.make_optimizer(args)`'s init."""
  config = pretrain.runtime.model_config(args, load_tokenizer(args.tokenizer))
  params = abstract_params(config)
  tx, _ = pretrain.optim.make_optimizer(args)
  return tree_bytes(jax.eval_shape(tx.init, params)), tree_bytes(params)


def device_info() -> dict:
  """The platform, device and library versions of this process."""
  device = jax.local_devices()[0]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
    "multinorm_optax": mo.__version__,
    "python": platform_lib.python_version(),
  }


def run_training(train_argv: list[str]) -> dict:
  """`pretrain.trainer.train` on `train_argv`; its summary plus status ("ok" or "diverged"), the
  device's peak memory (None where the device does not count it) and state bytes."""
  args = pretrain.cli.parse_args(train_argv)
  try:
    summary, status = pretrain.trainer.train(args), "ok"
  except pretrain.errors.NonFiniteLossError as e:
    print(f"diverged: {e}", flush=True)
    summary, status = e.summary, "diverged"
  stats = jax.local_devices()[0].memory_stats()
  state_bytes, param_bytes = optimizer_state_bytes(args)
  return {
    **summary,
    "status": status,
    "state_bytes": state_bytes,
    "param_bytes": param_bytes,
    "peak_memory_bytes": stats.get("peak_bytes_in_use") if stats else None,
  }


def in_fresh_process(fn, *args):
  # spawn, not fork: a forked child would inherit the parent's JAX runtime.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    return pool.submit(fn, *args).result()


# ------------------------------------------------------------------ reading a run


def step_times(history: list[dict], eval_every: int) -> list[float]:
  """Duration of each step after the first (which compiles), in order; a step that
  ran right after an evaluation is given the median duration instead."""
  durations = {
    h["step"]: h["time_s"] - prev["time_s"]
    for prev, h in zip(history, history[1:])
  }
  # History steps count completed updates: step s ran right after the
  # evaluation at s - 1.
  after_eval = {
    s for s in durations if eval_every and (s - 1) % eval_every == 0
  }
  clean = [d for s, d in durations.items() if s not in after_eval]
  median = statistics.median(clean or list(durations.values()) or [0.0])
  return [
    median if s in after_eval else d for s, d in sorted(durations.items())
  ]


def first_reaching(curve: list[dict], target: float) -> dict | None:
  """The first evaluation with val_loss <= target, or None."""
  return next(
    (e for e in curve if e["step"] > 0 and e["val_loss"] <= target), None
  )


def final_loss(run: dict) -> float:
  """The run's final validation loss; inf for a diverged or unusable run, so that
  it loses every comparison."""
  loss = run.get("final_val_loss")
  if run["status"] != "ok" or loss is None or not math.isfinite(loss):
    return math.inf
  return loss


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  if not values:
    return math.nan, math.nan
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return statistics.fmean(values), std


def loss_verdict(diffs: list[float]) -> str:
  """From per-seed differences d = loss - reference loss (paired: a seed fixes
  init, data order and validation files for both): "tie" when |mean d| <= std d,
  else "lower" or "higher"."""
  mean, std = mean_std(diffs)
  if not math.isfinite(mean):
    return "n/a"
  if abs(mean) <= std:
    return "tie"
  return "lower" if mean < 0 else "higher"


def speedup_verdict(mean: float, std: float) -> str:
  """ "tie" when mean - std <= 1 <= mean + std, else "faster" or "slower"."""
  if not math.isfinite(mean):
    return "n/a"
  if mean - std <= 1.0 <= mean + std:
    return "tie"
  return "faster" if mean > 1 else "slower"


# ------------------------------------------------------------------ the grid


def _geometric_step(values: list[float]) -> float:
  values = sorted(set(values))
  if len(values) < 2:
    return 3.0
  return min(b / a for a, b in zip(values, values[1:]))


def edges(runs: list[dict], best: dict) -> list[str]:
  """The sides ("lr low", "adam_lr high", ...) on which `best` is the last point of
  its line through the grid: no run with the same other lr lies beyond it."""
  out = []
  for axis, other in (("lr", "adam_lr"), ("adam_lr", "lr")):
    if best[axis] is None:
      continue
    line = [r[axis] for r in runs if r[other] == best[other]]
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


# ------------------------------------------------------------------ running


def train_argv(
  args,
  variant: str,
  lr: float,
  adam_lr: float | None,
  seed: int,
  corpus: str,
  run_dir: str,
  extra: tuple[str, ...] = (),
) -> list[str]:
  """train.py's flags for one run; `extra` flags go last before the outputs."""
  v = VARIANTS[variant]
  argv = [
    "--model",
    args.model,
    "--optimizer",
    v.optimizer,
    "--lr",
    repr(lr),
    "--alpha",
    repr(args.alpha),
    "--steps",
    str(args.steps),
    "--batch-size",
    str(args.batch_size),
    "--seq-len",
    str(args.seq_len),
    "--grad-clip",
    repr(args.grad_clip),
    "--data",
    corpus,
    "--seed",
    str(seed),
    "--eval-every",
    str(args.eval_every),
    "--eval-batches",
    str(args.eval_batches),
    *v.flags,
  ]
  if adam_lr is not None:
    argv += ["--adam-lr", repr(adam_lr)]
  if args.tokenizer:
    argv += ["--tokenizer", args.tokenizer]
  return argv + [
    *extra,
    "--run-dir",
    run_dir,
    "--ckpt-every",
    "0",
    "--metrics",
    "none",
    "--log-every",
    str(args.steps),
    "--no-progress",
  ]


def _run_key(flags: list[str]) -> str:
  i = flags.index("--run-dir")
  kept = flags[:i] + flags[i + 2 :]
  return hashlib.sha1(" ".join(kept).encode()).hexdigest()[:16]


class Runner:
  """Runs (or reuses from `out/runs/`) one training and returns its compact record."""

  def __init__(self, args, out: Path, scratch: str):
    self.args, self.scratch = args, scratch
    self.cache = out / "runs"
    self.cache.mkdir(parents=True, exist_ok=True)
    self.count = 0
    self.missing = []  # (variant, lr, adam_lr, seed, corpus) not stored

  def __call__(
    self,
    variant: str,
    lr: float,
    adam_lr: float | None,
    seed: int,
    corpus: str,
    extra: tuple[str, ...] = (),
  ) -> dict:
    args = self.args
    flags = train_argv(args, variant, lr, adam_lr, seed, corpus, "RUN", extra)
    path = self.cache / f"{variant}-{_run_key(flags)}.json"
    if path.exists():
      return json.loads(path.read_text())
    if args.cached_only:
      self.missing.append((variant, lr, adam_lr, seed, corpus))
      return None
    self.count += 1
    label = f"{variant} lr {lr:g}" + (
      f" adam_lr {adam_lr:g}" if adam_lr is not None else ""
    )
    print(
      f"\n[run {self.count}] {label}, seed {seed}, {corpus} {' '.join(extra)}",
      flush=True,
    )
    flags[flags.index("RUN")] = os.path.join(self.scratch, str(self.count))
    summary = (
      run_training(flags)
      if args.in_process
      else in_fresh_process(run_training, flags)
    )
    ok = summary["status"] == "ok"
    times = step_times(summary["history"], args.eval_every)
    median = statistics.median(times) if times else None
    tokens_per_step = args.batch_size * args.seq_len
    record = {
      "variant": variant,
      "lr": lr,
      "adam_lr": adam_lr,
      "seed": seed,
      "corpus": corpus,
      "train_argv": flags,
      "status": summary["status"],
      # a diverged run's last evaluation is not its final loss
      "final_val_loss": summary["final_val_loss"] if ok else None,
      "final_train_loss": summary["final_train_loss"],
      "median_step_s": median,
      "tokens_per_s": tokens_per_step / median if median else None,
      "load_average_after": os.getloadavg(),
      "wall_time_s": summary["time_s"],
      "peak_memory_bytes": None
      if args.in_process
      else summary["peak_memory_bytes"],
      "state_bytes": summary["state_bytes"],
      "param_bytes": summary["param_bytes"],
      "params": summary.get("params"),
      "curve": [
        {"step": e["step"], "val_loss": e["val_loss"]} for e in summary["evals"]
      ],
    }
    path.write_text(json.dumps(record))
    return record


def tune(run: Runner, variant: str, grid, seed: int, corpus: str, limit: int):
  """Every point of `grid` = (lrs, adam_lrs or None), then points past the edges
  (`next_point`), at most `limit` of them. Returns (runs, best, edge flags)."""
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


# ------------------------------------------------------------------ summary


def summarize(final: dict, corpora: list[str], seeds: list[int]) -> dict:
  """Per corpus: one row per variant with mean/std of final loss, steps to the best
  AdamW's final loss, speedup and verdicts. `final[variant][(corpus, seed)]` = run."""
  out = {}
  for corpus in corpora:
    rows = {}
    for variant, by_key in final.items():
      losses = [
        final_loss(by_key[(corpus, s)]) for s in seeds if (corpus, s) in by_key
      ]
      if losses:
        rows[variant] = {"losses": losses, "loss": mean_std(losses)}
    kinds = [k for k in ADAMW_KINDS if k in rows]
    ref = min(kinds, key=lambda k: rows[k]["loss"][0]) if kinds else None
    for variant, row in rows.items():
      row["steps"], row["speedups"], row["diffs"] = [], [], []
      if ref is None:
        continue
      for s in seeds:
        mine = final[variant].get((corpus, s))
        theirs = final[ref].get((corpus, s))
        if mine is None or theirs is None:
          continue
        target = final_loss(theirs)
        row["diffs"].append(final_loss(mine) - target)
        hit = first_reaching(mine["curve"], target)
        ref_hit = first_reaching(theirs["curve"], target)
        row["steps"].append(hit["step"] if hit else None)
        if hit and ref_hit:
          row["speedups"].append(ref_hit["step"] / hit["step"])
      reached = [x for x in row["steps"] if x is not None]
      row["reached"] = f"{len(reached)}/{len(row['steps'])}"
      row["steps_ms"] = mean_std(reached)
      complete = row["steps"] and len(reached) == len(row["steps"])
      row["speedup"] = (
        mean_std(row["speedups"]) if complete else (math.nan, math.nan)
      )
      row["diff"] = mean_std(row["diffs"])
      row["loss_verdict"] = loss_verdict(row["diffs"])
      row["speedup_verdict"] = (
        speedup_verdict(*row["speedup"]) if complete else "not reached"
      )
    if rows:
      out[corpus] = {"reference": ref, "rows": rows}
  return out


# ------------------------------------------------------------------ reporting


def format_lr(x) -> str:
  return "—" if x is None else f"{x:.3g}"


def _pm(ms, fmt=".4f") -> str:
  mean, std = ms
  if not math.isfinite(mean):
    return "n/a"
  return f"{mean:{fmt}} ± {std:{fmt.lstrip('+')}}"


def _point(variant: str, lr, adam_lr, alpha: float) -> str:
  v = VARIANTS[variant]
  text = f"lr {format_lr(lr)}"
  if v.optimizer in ("sinkgd", "swan", "sinkgd_stateless"):
    rule = dict(zip(v.flags, v.flags[1:])).get("--update-scale", "rms")
    scale = "" if rule == "rms" else f" x {rule} s(m, n)"
    text += f" (matrices {alpha * lr:.2g}{scale})"
  if adam_lr is not None:
    text += f", adam_lr {format_lr(adam_lr)}"
  return text


def markdown(result: dict) -> str:
  meta, s = result["metadata"], result["settings"]
  lines = [
    f"Convergence on {meta['device_kind']} ({meta['platform']}, "
    f"{meta['cpu_count']} CPU cores), {meta['date']}; jax {meta['jax']}, "
    f"flax {meta['flax']}, optax {meta['optax']}.",
    "",
    f"Command: `{meta['command']}`",
    "",
    f"Model `{s['model']}` ({(s['params'] or 0) / 1e6:.2f}M params), "
    f"{s['steps']} steps of {s['batch_size']} x {s['seq_len']} tokens "
    f"({s['steps'] * s['batch_size'] * s['seq_len'] / 1e3:.1f}k tokens), byte "
    f"tokens, warmup 10% then cosine to 10% of the peak lr, gradient clip "
    f"{s['grad_clip']:g}; validation every {s['eval_every']} steps on "
    f"{s['eval_batches']} batches. sinkgd/swan: matrices step alpha x lr, alpha "
    f"{s['alpha']:g}; sinkgd 5 SR-Sinkhorn rounds (fused), swan's default "
    "whitening (4 quintic steps, `fast`). Tuned on seed "
    f"{s['tune_seed']} of {s['corpora'][0]}; seeds {s['seeds']}; corpora "
    f"{', '.join(s['corpora'])}.",
    "",
    "### Tuning (final validation loss; best in bold)",
    "",
  ]
  for variant, t in result["tuning"].items():
    runs = t["runs"]
    lrs = sorted({r["lr"] for r in runs})
    adam_lrs = sorted({r["adam_lr"] for r in runs if r["adam_lr"] is not None})
    best = t["best"]
    flag = f" — best on an edge ({', '.join(t['edges'])})" if t["edges"] else ""
    lines.append(
      f"**{variant}**: best {_point(variant, best['lr'], best['adam_lr'], s['alpha'])}"
      f"{flag}"
    )
    lines.append("")
    cols = adam_lrs or [None]
    head = "adam_lr →" if adam_lrs else ""
    lines.append(
      f"| lr {head} | "
      + " | ".join(format_lr(c) if c else "" for c in cols)
      + " |"
    )
    lines.append("|---|" + "---|" * len(cols))
    for lr in lrs:
      cells = []
      for c in cols:
        match = [r for r in runs if r["lr"] == lr and r["adam_lr"] == c]
        if not match:
          cells.append("")
          continue
        loss = final_loss(match[0])
        text = f"{loss:.4f}" if math.isfinite(loss) else match[0]["status"]
        cells.append(f"**{text}**" if match[0] is best else text)
      lines.append(f"| {format_lr(lr)} | " + " | ".join(cells) + " |")
    lines.append("")
  for corpus, summary in result["summary"].items():
    ref = summary["reference"]
    lines += [
      f"### {corpus}: each optimizer at its tuned point, "
      f"{len(s['seeds'])} seeds (mean ± std)",
      "",
      f"Reference: the best AdamW on this corpus, **{ref}**. Target of a seed: "
      f"{ref}'s final validation loss on that seed.",
      "",
      "| optimizer | point | final val loss | minus best AdamW's, per seed "
      "| steps to target "
      "(reached) | speedup vs best AdamW | optimizer state |",
      "|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary["rows"].items():
      point = result["points"][variant]
      speed = row.get("speedup", (math.nan, math.nan))
      speed_text = (
        f"{speed[0]:.2f}x ± {speed[1]:.2f} ({row['speedup_verdict']})"
        if math.isfinite(speed[0])
        else row.get("speedup_verdict", "n/a")
      )
      lines.append(
        f"| {variant} | {_point(variant, point['lr'], point['adam_lr'], s['alpha'])} | "
        f"{_pm(row['loss'])} (n={len(row['losses'])}) | "
        f"{_pm(row.get('diff', (math.nan, 0)), '+.4f')} "
        f"({row.get('loss_verdict', 'n/a')}) | "
        f"{_pm(row.get('steps_ms', (math.nan, 0)), '.0f')} "
        f"({row.get('reached', 'n/a')}) | {speed_text} | "
        f"{point['state_bytes'] / 2**20:.2f} MiB |"
      )
    lines.append("")
  loads = [r["load_average_after"][0] for r in result["all_runs"]]
  if loads:
    lines.append(
      f"Steps are read off the evaluations (every {s['eval_every']} steps). "
      "A seed changes the validation files too, so losses are compared per "
      "seed (paired): the difference to the best AdamW's final loss on the same "
      'seed, mean ± std over seeds, is a "tie" when |mean| <= std; a speedup is '
      'a "tie" when 1 is within mean ± std. Machine load '
      f"(1-minute load average after each run): {min(loads):.1f} to "
      f"{max(loads):.1f} on {meta['cpu_count']} cores; times are not compared."
    )
  missing = meta.get("runs_missing") or []
  if missing:
    lines += [
      "",
      f"Not run (--cached-only; not in this report): {len(missing)} runs: "
      + "; ".join(
        f"{v} {_point(v, lr, alr, s['alpha'])} seed {seed} {corpus}"
        for v, lr, alr, seed, corpus in missing
      )
      + ".",
    ]
  lines += [
    "",
    "![validation loss vs step](val_loss_vs_step.png) "
    "![lr sweep](lr_sweep.png)",
  ]
  return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  s = result["settings"]
  corpora = list(result["summary"])
  fig, axes = plt.subplots(
    1, len(corpora), figsize=(6.5 * len(corpora), 4.5), squeeze=False
  )
  for ax, corpus in zip(axes[0], corpora):
    lows, highs = [], []
    for variant in result["summary"][corpus]["rows"]:
      curves = [
        r["curve"]
        for r in result["final_runs"]
        if r["variant"] == variant
        and r["corpus"] == corpus
        and final_loss(r) < math.inf
      ]
      if not curves:
        continue
      steps = [e["step"] for e in curves[0]]
      values = np.array([[e["val_loss"] for e in c] for c in curves])
      mean, std = (
        values.mean(0),
        values.std(0, ddof=1 if len(values) > 1 else 0),
      )
      (line,) = ax.plot(steps, mean, label=f"{variant} ({len(curves)} seeds)")
      ax.fill_between(
        steps, mean - std, mean + std, color=line.get_color(), alpha=0.2
      )
      lows.append(mean.min())
      highs.append(mean[len(mean) // 3])
    if lows:
      ax.set_ylim(min(lows) - 0.05, max(highs) + 0.05)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(
      f"{corpus}: {s['model']}, {s['steps']} steps of {s['batch_size']}x"
      f"{s['seq_len']} (mean ± std)",
      fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "val_loss_vs_step.png", dpi=110)
  plt.close(fig)

  tuned = list(result["tuning"])
  fig, axes = plt.subplots(
    1, len(tuned), figsize=(3.6 * len(tuned), 3.4), squeeze=False
  )
  for ax, variant in zip(axes[0], tuned):
    runs = result["tuning"][variant]["runs"]
    for alr in sorted(
      {r["adam_lr"] for r in runs}, key=lambda x: (x is not None, x)
    ):
      line = sorted(
        (r for r in runs if r["adam_lr"] == alr and final_loss(r) < math.inf),
        key=lambda r: r["lr"],
      )
      ax.plot(
        [r["lr"] for r in line],
        [r["final_val_loss"] for r in line],
        marker="o",
        label="one lr" if alr is None else f"adam_lr {alr:g}",
      )
    ax.set_xscale("log")
    ax.set_xlabel("lr (matrices: alpha x lr for sinkgd/swan)", fontsize=7)
    ax.set_title(variant, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("final validation loss")
  fig.tight_layout()
  fig.savefig(out / "lr_sweep.png", dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------ the command


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  cpu = SIZES["cpu"]
  tuned = [n for n, v in VARIANTS.items() if v.base is None]
  p.add_argument(
    "--optimizers",
    type=csv_list,
    default=list(DEFAULT_OPTIMIZERS),
    help=f"comma-separated, from {', '.join(tuned)} "
    f"(default {','.join(DEFAULT_OPTIMIZERS)})",
  )
  ablations = [n for n, v in VARIANTS.items() if v.base is not None]
  p.add_argument(
    "--ablations",
    type=csv_list,
    default=[],
    help=f"comma-separated, from {', '.join(ablations)}, or 'default' "
    f"({','.join(DEFAULT_ABLATIONS)}); none unless given",
  )
  for name in tuned:
    lrs, adam_lrs = DEFAULT_GRIDS[name]
    p.add_argument(
      f"--lrs-{name}",
      type=float_list,
      default=None,
      metavar="LR,...",
      help=f"{name}'s lr grid (default {','.join(f'{x:g}' for x in lrs)})",
    )
    if adam_lrs:
      p.add_argument(
        f"--adam-lrs-{name}",
        type=float_list,
        default=None,
        metavar="LR,...",
        help=f"{name}'s AdamW-group lr grid (default "
        f"{','.join(f'{x:g}' for x in adam_lrs)})",
      )
  for flag, key in (
    ("--model", "model"),
    ("--steps", "steps"),
    ("--batch-size", "batch_size"),
    ("--seq-len", "seq_len"),
    ("--eval-every", "eval_every"),
    ("--eval-batches", "eval_batches"),
  ):
    p.add_argument(
      flag,
      type=str if key == "model" else int,
      default=None,
      help=f"default {cpu[key]} on CPU, {SIZES['accelerator'][key]} on GPU/TPU",
    )
  p.add_argument(
    "--seeds",
    type=int_list,
    default=[0, 1, 2],
    help="seeds of the final runs (default 0,1,2)",
  )
  p.add_argument(
    "--tune-seed", type=int, default=0, help="seed of the sweep (%(default)s)"
  )
  p.add_argument(
    "--corpora",
    type=csv_list,
    default=["stdlib", "jaxstack"],
    help="train.py --data specs; the sweep uses the first (%(default)s)",
  )
  p.add_argument(
    "--max-extend",
    type=int,
    default=2,
    help="most points added past an edge, per optimizer (%(default)s)",
  )
  p.add_argument(
    "--alpha",
    type=float,
    default=0.05,
    help="sinkgd/swan: hidden matrices step alpha * lr (%(default)s)",
  )
  p.add_argument("--grad-clip", type=float, default=1.0, help="(%(default)s)")
  p.add_argument(
    "--tokenizer", default=None, help="as train.py's (default: bytes)"
  )
  p.add_argument(
    "--tune-only", action="store_true", help="stop after the sweep"
  )
  p.add_argument(
    "--cached-only",
    action="store_true",
    help="train nothing: report the runs stored in OUT/runs/ and list the "
    "missing ones",
  )
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output folder (default benchmarks/results/convergence_<platform>)",
  )
  p.add_argument(
    "--in-process",
    action="store_true",
    help="run the trainings in this process (faster on CPU; peak memory is "
    "then not reported)",
  )
  args = p.parse_args(argv)
  if args.ablations == ["default"]:
    args.ablations = list(DEFAULT_ABLATIONS)
  bad = [n for n in args.optimizers if n not in tuned] + [
    n for n in args.ablations if n not in ablations
  ]
  if bad or not args.optimizers:
    p.error(
      f"unknown optimizer(s) {bad}; choose from {', '.join(tuned)} and "
      f"ablations {', '.join(ablations)}"
    )
  missing = [
    n for n in args.ablations if VARIANTS[n].base not in args.optimizers
  ]
  if missing:
    p.error(f"ablation(s) {missing} need their base optimizer in --optimizers")
  if not args.seeds or not args.corpora:
    p.error("--seeds and --corpora need at least one value each")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  argv_list = sys.argv[1:] if argv is None else list(argv)
  # The parent never starts a JAX backend when runs have their own processes: on a GPU
  # it would take the memory the runs need.
  info = device_info() if args.in_process else in_fresh_process(device_info)
  sizes = SIZES["cpu" if info["platform"] == "cpu" else "accelerator"]
  for key, default in sizes.items():
    if getattr(args, key) is None:
      setattr(args, key, default)
  out = (
    args.out
    or REPO / "benchmarks" / "results" / f"convergence_{info['platform']}"
  )
  out.mkdir(parents=True, exist_ok=True)
  grids = {
    name: (
      getattr(args, f"lrs_{name}") or DEFAULT_GRIDS[name][0],
      (getattr(args, f"adam_lrs_{name}", None) or DEFAULT_GRIDS[name][1])
      if VARIANTS[name].two_groups
      else None,
    )
    for name in args.optimizers
  }
  result = {
    "metadata": {
      **info,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": shlex.join(
        ["python", "benchmarks/convergence.py", *argv_list]
      ),
      "argv": argv_list,
      "isolated_processes": not args.in_process,
    },
    "settings": {
      **{k: getattr(args, k) for k in SIZES["cpu"]},
      "alpha": args.alpha,
      "grad_clip": args.grad_clip,
      "tokenizer": args.tokenizer or "byte",
      "seeds": args.seeds,
      "tune_seed": args.tune_seed,
      "corpora": args.corpora,
      "grids": grids,
      "max_extend": args.max_extend,
      "params": None,
    },
    "tuning": {},
    "points": {},
    "final_runs": [],
    "summary": {},
    "all_runs": [],
  }
  with tempfile.TemporaryDirectory(prefix="convergence_runs_") as scratch:
    run = Runner(args, out, scratch)
    for name in args.optimizers:
      runs, best, flags = tune(
        run, name, grids[name], args.tune_seed, args.corpora[0], args.max_extend
      )
      if best is not None:
        result["tuning"][name] = {"runs": runs, "best": best, "edges": flags}
        result["settings"]["params"] = best.get("params")
    if args.tune_only:
      result["all_runs"] = [
        r for t in result["tuning"].values() for r in t["runs"]
      ]
      (out / "convergence.json").write_text(json.dumps(result))
      print(markdown(result), flush=True)
      return result
    final = {
      name: {}
      for name in args.optimizers + args.ablations
      if (VARIANTS[name].base or name) in result["tuning"]
    }
    for name in final:
      best = result["tuning"][VARIANTS[name].base or name]["best"]
      result["points"][name] = {"lr": best["lr"], "adam_lr": best["adam_lr"]}
    # Seed by seed, so that a run cut short leaves whole seeds behind it.
    plan = [
      (corpus, seed, name)
      for corpus in args.corpora
      for seed in args.seeds
      for name in args.optimizers
    ] + [
      (args.corpora[0], seed, name)
      for name in args.ablations
      for seed in args.seeds
    ]
    for corpus, seed, name in plan:
      if name not in final:
        continue
      point = result["points"][name]
      r = run(name, point["lr"], point["adam_lr"], seed, corpus)
      if r is None:
        continue
      final[name][(corpus, seed)] = r
      result["final_runs"].append(r)
      point["state_bytes"] = r["state_bytes"]
    result["metadata"]["runs_trained"] = run.count
    result["metadata"]["runs_missing"] = run.missing
  result["summary"] = summarize(final, args.corpora, args.seeds)
  result["all_runs"] = result["final_runs"] + [
    r for t in result["tuning"].values() for r in t["runs"]
  ]
  (out / "convergence.json").write_text(json.dumps(result))
  table = markdown(result)
  (out / "convergence.md").write_text(table)
  plot(result, out)
  print("\n" + table, flush=True)
  return result


if __name__ == "__main__":
  main()
