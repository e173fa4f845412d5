r"""Convergence against AdamW: validation loss per step, token and second, each optimizer tuned.

    python benchmarks/convergence.py                     # CPU: tiny model, 4 optimizers x 3 lrs
    python benchmarks/convergence.py --optimizers adamw,sinkgd --lrs-sinkgd 0.01,0.03

Every run is `train.train` (train.py's model, data, schedule and step; no second loop)
with the same model, data and data order (--seed), batch, sequence length, steps and
schedule (linear warmup over 10% of the steps, then cosine to 10% of the peak).
Only --optimizer and --lr change. Each optimizer is swept over a small learning-rate
grid (`--lrs-<optimizer>`, defaults in `DEFAULT_LRS`); its best run, by final
validation loss, is the run compared: same budget, nothing re-run. For sinkgd and swan
the swept lr is the recipe's global one: AdamW steps embeddings, head and norms at lr,
the hidden matrices step alpha * lr (alpha fixed, 0.05 as in the paper). Muon's AdamW
part keeps train.py's lr (3e-3).

Each run is a fresh process (unless --in-process), so a device's peak-memory counter
(`memory_stats()["peak_bytes_in_use"]`, a running maximum that JAX cannot reset) belongs
to that run alone. CPUs have no such counter: memory is "n/a" there, and the memory
plot shows optimizer-state bytes instead (from `jax.eval_shape` of the optimizer's init
over the model's parameters, the same for any device).

Reported per optimizer: best lr, final validation loss and perplexity, the first
evaluation at which it reaches AdamW's final validation loss (step, tokens, training
seconds) and the paper's speedup, step at which AdamW first reaches its final loss /
that step ("not reached" if never; the resolution is --eval-every), tokens/s, peak
memory and optimizer-state bytes. Times are training time: the summed duration of the
steps, leaving out the first (compilation) and the evaluations (a step that follows an
evaluation counts as the median step); tokens/s is tokens per step / the median step
time. They are this machine's, under whatever else runs on it (the load average after
each run is recorded); compare them only within one run of this script.

Outputs in --out (default benchmarks/results/convergence_<platform>): convergence.json
(every run with its history and evaluations, the settings, the machine, library versions,
date and command; rewritten after each run), convergence.md (sweep and summary tables,
also printed at the end) and the plots val_loss_vs_step.png, val_loss_vs_time.png,
memory.png and lr_sweep.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
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
if (
  str(REPO) not in sys.path
):  # `python benchmarks/convergence.py` from a checkout
  sys.path.insert(0, str(REPO))

import train  # noqa: E402
from benchmarks.step_cost import tree_bytes  # noqa: E402
from models.llama import abstract_params  # noqa: E402
from pretrain.tokenizer import load_tokenizer  # noqa: E402

DEFAULT_OPTIMIZERS = ("adamw", "sinkgd", "swan", "muon")
# Grids 2-3x apart whose middle value was the best of a wider sweep of the default CPU
# run (adamw 3e-4..1e-2, sinkgd/swan 3e-3..0.1, muon 0.01..0.05). For sinkgd/swan the
# hidden matrices get alpha * lr.
DEFAULT_LRS = {
  "adamw": (3e-4, 1e-3, 3e-3),
  "sinkgd": (1e-2, 3e-2, 0.1),
  "swan": (1e-2, 3e-2, 0.1),
  "muon": (0.01, 0.02, 0.05),
  "adafactor": (3e-3, 1e-2, 3e-2),
  "sgd": (0.1, 0.3, 1.0),
}
# Run sizes per platform; the CPU one makes the default sweep (12 runs) take about
# 20 minutes on 2 cores. The stdlib corpus (byte tokens) holds ~31M training tokens,
# so both stay well inside one epoch.
SIZES = {
  "cpu": {
    "model": "tiny",
    "steps": 400,
    "batch_size": 16,
    "seq_len": 64,
    "eval_every": 25,
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
  shapes alone: `jax.eval_shape` of `train.make_optimizer(args)`'s init."""
  config = train.model_config(args, load_tokenizer(args.tokenizer))
  params = abstract_params(config)
  tx, _ = train.make_optimizer(args)
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
  """`train.train` on `train_argv`; its summary plus status ("ok" or "diverged"), the
  device's peak memory (None where the device does not count it) and state bytes."""
  args = train.parse_args(train_argv)
  try:
    summary, status = train.train(args), "ok"
  except train.NonFiniteLossError as e:
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


def _in_fresh_process(fn, *args):
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
  after_eval = {s for s in durations if eval_every and s % eval_every == 0}
  clean = [d for s, d in durations.items() if s not in after_eval]
  median = statistics.median(clean or list(durations.values()) or [0.0])
  return [
    median if s in after_eval else d for s, d in sorted(durations.items())
  ]


def eval_curve(run: dict, tokens_per_step: int, eval_every: int) -> list[dict]:
  """The run's evaluations with tokens and training seconds at each.

  Training seconds after k steps: the first step (compilation) counts as the median
  step, then the `step_times` of steps 1..k-1."""
  times = step_times(run["history"], eval_every)
  first = statistics.median(times) if times else 0.0
  cumulative = [first]
  for d in times:
    cumulative.append(cumulative[-1] + d)
  return [
    {
      "step": e["step"],
      "tokens": e["step"] * tokens_per_step,
      "time_s": cumulative[min(e["step"], len(cumulative)) - 1]
      if e["step"]
      else 0.0,
      "val_loss": e["val_loss"],
    }
    for e in run["evals"]
  ]


def first_reaching(curve: list[dict], target: float) -> dict | None:
  """The first evaluation with val_loss <= target, or None."""
  return next(
    (e for e in curve if e["step"] > 0 and e["val_loss"] <= target), None
  )


def is_usable(run: dict) -> bool:
  loss = run.get("final_val_loss")
  return run["status"] == "ok" and loss is not None and math.isfinite(loss)


def summarize(runs: list[dict], optimizers: list[str]) -> list[dict]:
  """One row per optimizer: its best run (lowest final val loss) against AdamW's."""
  best = {}
  for name in optimizers:
    usable = [r for r in runs if r["optimizer"] == name and is_usable(r)]
    best[name] = (
      min(usable, key=lambda r: r["final_val_loss"]) if usable else None
    )
  adamw = best.get("adamw")
  target = adamw["final_val_loss"] if adamw else None
  adamw_hit = first_reaching(adamw["curve"], target) if adamw else None
  rows = []
  for name in optimizers:
    r = best[name]
    row = {
      "optimizer": name,
      "best_lr": None,
      "final_val_loss": None,
      "final_val_ppl": None,
      "target_val_loss": target,
      "reached_step": None,
      "reached_tokens": None,
      "reached_time_s": None,
      "speedup_steps": None,
      "speedup_time": None,
      "tokens_per_s": None,
      "peak_memory_bytes": None,
      "state_bytes": None,
      "param_bytes": None,
    }
    if r is None:
      row["speedup_steps"] = row["speedup_time"] = "no usable run"
      rows.append(row)
      continue
    row.update(
      best_lr=r["lr"],
      final_val_loss=r["final_val_loss"],
      final_val_ppl=r["final_val_ppl"],
      tokens_per_s=r["train_tokens_per_s"],
      peak_memory_bytes=r["peak_memory_bytes"],
      state_bytes=r["state_bytes"],
      param_bytes=r["param_bytes"],
    )
    if target is None:
      row["speedup_steps"] = row["speedup_time"] = "no adamw run"
    elif (hit := first_reaching(r["curve"], target)) is None:
      row["speedup_steps"] = row["speedup_time"] = "not reached"
    else:
      row.update(
        reached_step=hit["step"],
        reached_tokens=hit["tokens"],
        reached_time_s=hit["time_s"],
        speedup_steps=adamw_hit["step"] / hit["step"],
        speedup_time=(
          adamw_hit["time_s"] / hit["time_s"] if hit["time_s"] > 0 else None
        ),
      )
    rows.append(row)
  return rows


# ------------------------------------------------------------------ reporting


def _num(x, fmt: str) -> str:
  return format(x, fmt) if isinstance(x, (int, float)) else (x or "n/a")


def _tokens(n: int) -> str:
  return (
    f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)
  )


def _mib(n) -> str:
  return f"{n / 2**20:.2f} MiB" if isinstance(n, (int, float)) else "n/a"


def markdown(result: dict) -> str:
  meta, s = result["metadata"], result["settings"]
  lines = [
    f"Convergence on {meta['device_kind']} ({meta['platform']}, "
    f"{meta['device_count']} device(s), {meta['cpu_count']} CPU cores), {meta['date']}; "
    f"jax {meta['jax']}, flax {meta['flax']}, optax {meta['optax']}.",
    "",
    f"Command: `{meta['command']}`",
    "",
    f"Model `{s['model']}` ({_num(s['params'] and s['params'] / 1e6, '.2f')}M params), data {s['data']} "
    f"(byte tokens unless --tokenizer), {s['steps']} steps of {s['batch_size']} x "
    f"{s['seq_len']} tokens ({_tokens(s['tokens'])} tokens), warmup 10% then cosine to "
    f"10% of the peak lr, gradient clip {s['grad_clip']:g}, seed {s['seed']}; validation "
    f"every {s['eval_every']} steps on {s['eval_batches']} batches. sinkgd/swan: alpha "
    f"{s['alpha']:g} (hidden matrices step alpha x lr), sinkgd {s['num_iters']} "
    "SR-Sinkhorn rounds; "
    + (
      "muon: AdamW part at lr 3e-3; sinkgd/swan: AdamW part at lr = the swept lr."
      if s.get("adam_lr") is None
      else f"sinkgd/swan/muon: AdamW part (embeddings, head, norms) fixed at lr {s['adam_lr']:g}."
    ),
    "",
    "### Learning-rate sweep (final validation loss; best in bold)",
    "",
    "| optimizer | lr | final val loss | val ppl | tokens/s | status |",
    "|---|---|---|---|---|---|",
  ]
  best_lr = {row["optimizer"]: row["best_lr"] for row in result["summary"]}
  for r in result["runs"]:
    loss = _num(r["final_val_loss"], ".4f")
    if r["lr"] == best_lr.get(r["optimizer"]):
      loss = f"**{loss}**"
    lines.append(
      f"| {r['optimizer']} | {r['lr']:g} | {loss} | "
      f"{_num(r['final_val_ppl'], '.2f')} | "
      f"{_num(r['train_tokens_per_s'], ',.0f')} | {r['status']} |"
    )
  memory_note = (
    "the device's peak_bytes_in_use, each run in its own process"
    if any(
      isinstance(row["peak_memory_bytes"], int) for row in result["summary"]
    )
    else "n/a, the device does not report it"
  )
  loads = [r["load_average_after"][0] for r in result["runs"]]
  load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "n/a"
  lines += [
    "",
    "### Each optimizer at its best lr, against AdamW's final validation loss"
    + (
      f" ({result['summary'][0]['target_val_loss']:.4f})"
      if isinstance(result["summary"][0]["target_val_loss"], float)
      else ""
    ),
    "",
    "| optimizer | best lr | final val loss | val ppl | reaches AdamW's final loss at "
    "step (tokens) | speedup vs AdamW, steps | same, training time | tokens/s | "
    "peak memory | optimizer state |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in result["summary"]:
    reached = (
      f"{row['reached_step']} ({_tokens(row['reached_tokens'])})"
      if row["reached_step"]
      else row["speedup_steps"]
    )
    lines.append(
      f"| {row['optimizer']} | {_num(row['best_lr'], 'g')} | "
      f"{_num(row['final_val_loss'], '.4f')} | {_num(row['final_val_ppl'], '.2f')} | "
      f"{reached} | {_num(row['speedup_steps'], '.2f')}"
      f"{'x' if isinstance(row['speedup_steps'], float) else ''} | "
      f"{_num(row['speedup_time'], '.2f')}"
      f"{'x' if isinstance(row['speedup_time'], float) else ''} | "
      f"{_num(row['tokens_per_s'], ',.0f')} | {_mib(row['peak_memory_bytes'])} | "
      f"{_mib(row['state_bytes'])} |"
    )
  lines += [
    "",
    f"Speedup vs AdamW = the step at which AdamW first reaches its final validation loss "
    f"/ the step at which the optimizer does (read off the evaluations, every "
    f'{s["eval_every"]} steps); "same, training time" is that ratio in training '
    "seconds: the measured step times summed, leaving out the first step (compilation) "
    "and the evaluations. Tokens/s: tokens per step / the run's median step time. Times "
    f"are this machine's under whatever else ran on it (1-minute load average after "
    f"the runs: {load}, on {meta['cpu_count']} cores); compare them only within one "
    f"table. Peak memory: {memory_note}. Optimizer state: bytes of the optimizer's "
    f"state (parameters: {_mib(result['summary'][0]['param_bytes'])}).",
    "",
    "![validation loss vs step](val_loss_vs_step.png) "
    "![validation loss vs time](val_loss_vs_time.png) "
    "![memory](memory.png) ![lr sweep](lr_sweep.png)",
  ]
  return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  s, summary = result["settings"], result["summary"]
  best = {row["optimizer"]: row["best_lr"] for row in summary}
  chosen = [r for r in result["runs"] if r["lr"] == best[r["optimizer"]]]
  target = summary[0]["target_val_loss"]
  title = f"{s['model']}, {s['steps']} steps of {s['batch_size']}x{s['seq_len']} tokens"
  for key, xlabel, name in (
    ("step", "step", "val_loss_vs_step.png"),
    ("time_s", "training time (s)", "val_loss_vs_time.png"),
  ):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in chosen:
      ax.plot(
        [e[key] for e in r["curve"]],
        [e["val_loss"] for e in r["curve"]],
        marker=".",
        label=f"{r['optimizer']} (lr {r['lr']:g})",
      )
    if isinstance(target, float):
      ax.axhline(target, color="gray", ls="--", lw=1, label="AdamW final")
    losses = [e["val_loss"] for r in chosen for e in r["curve"][1:]]
    if losses:  # leave the first evaluations' high losses off the scale
      ax.set_ylim(
        min(losses) - 0.05, sorted(losses)[len(losses) * 9 // 10] + 0.1
      )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(
      f"Validation loss vs {xlabel.split(' (')[0]}: {title}", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)

  has_memory = any(isinstance(row["peak_memory_bytes"], int) for row in summary)
  field = "peak_memory_bytes" if has_memory else "state_bytes"
  rows = [row for row in summary if isinstance(row[field], int)]
  fig, ax = plt.subplots(figsize=(6, 4))
  bars = ax.bar(
    [row["optimizer"] for row in rows], [row[field] / 2**20 for row in rows]
  )
  ax.bar_label(bars, fmt="%.2f")
  ax.set_ylabel("MiB")
  ax.set_title(
    f"Peak device memory ({result['metadata']['device_kind']})"
    if has_memory
    else "Optimizer-state bytes (peak device memory n/a on this "
    f"{result['metadata']['platform']})",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(out / "memory.png", dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  for name in best:
    runs = sorted(
      (r for r in result["runs"] if r["optimizer"] == name and is_usable(r)),
      key=lambda r: r["lr"],
    )
    ax.plot(
      [r["lr"] for r in runs],
      [r["final_val_loss"] for r in runs],
      marker="o",
      label=name,
    )
  ax.set_xscale("log")
  ax.set_xlabel("peak learning rate")
  ax.set_ylabel("final validation loss")
  ax.set_title(f"Learning-rate sweep: {title}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "lr_sweep.png", dpi=120)
  plt.close(fig)


# ------------------------------------------------------------------ the command


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  cpu = SIZES["cpu"]
  p.add_argument(
    "--optimizers",
    default=",".join(DEFAULT_OPTIMIZERS),
    help=f"comma-separated, from {', '.join(train.OPTIMIZERS)} (%(default)s)",
  )
  for name in train.OPTIMIZERS:
    p.add_argument(
      f"--lrs-{name}",
      type=_floats,
      default=None,
      metavar="LR,...",
      help=f"{name}'s lr grid (default "
      f"{','.join(f'{x:g}' for x in DEFAULT_LRS[name])})",
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
    "--alpha",
    type=float,
    default=0.05,
    help="sinkgd/swan: hidden matrices step alpha * lr (%(default)s)",
  )
  p.add_argument(
    "--adam-lr",
    type=float,
    default=None,
    help="sinkgd/swan/muon: fix the lr of their AdamW group (embeddings, head, "
    "norms) instead of train.py's default, to separate the two groups",
  )
  p.add_argument(
    "--num-iters",
    type=int,
    default=5,
    help="sinkgd: SR-Sinkhorn rounds (%(default)s)",
  )
  p.add_argument("--grad-clip", type=float, default=1.0, help="(%(default)s)")
  p.add_argument(
    "--data", default="stdlib", help="as train.py's --data (%(default)s)"
  )
  p.add_argument(
    "--tokenizer", default=None, help="as train.py's (default: bytes)"
  )
  p.add_argument(
    "--seed",
    type=int,
    default=0,
    help="model init and data order, the same for every run (%(default)s)",
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
    help="run the trainings in this process (peak memory is then a maximum "
    "over the runs so far, so it is not reported)",
  )
  args = p.parse_args(argv)
  args.optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
  unknown = sorted(set(args.optimizers) - set(train.OPTIMIZERS))
  if unknown or not args.optimizers:
    p.error(
      f"unknown optimizer(s) {unknown}; choose from {', '.join(train.OPTIMIZERS)}"
    )
  return args


def train_argv(args, optimizer: str, lr: float, run_dir: str) -> list[str]:
  """train.py's flags for one run of the sweep."""
  argv = [
    "--model",
    args.model,
    "--optimizer",
    optimizer,
    "--lr",
    repr(lr),
    "--alpha",
    repr(args.alpha),
    "--num-iters",
    str(args.num_iters),
    "--steps",
    str(args.steps),
    "--batch-size",
    str(args.batch_size),
    "--seq-len",
    str(args.seq_len),
    "--grad-clip",
    repr(args.grad_clip),
    "--data",
    args.data,
    "--seed",
    str(args.seed),
    "--eval-every",
    str(args.eval_every),
    "--eval-batches",
    str(args.eval_batches),
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
  if args.adam_lr is not None and optimizer in ADAM_GROUP_OPTIMIZERS:
    argv += ["--adam-lr", repr(args.adam_lr)]
  return argv + (["--tokenizer", args.tokenizer] if args.tokenizer else [])


# Optimizers whose recipe sends embeddings, head and norms to a separate AdamW group.
ADAM_GROUP_OPTIMIZERS = ("sinkgd", "swan", "muon")


def main(argv=None) -> dict:
  args = parse_args(argv)
  argv_list = sys.argv[1:] if argv is None else list(argv)
  # The parent never starts a JAX backend when runs have their own processes: on a GPU
  # it would take the memory the runs need.
  info = device_info() if args.in_process else _in_fresh_process(device_info)
  sizes = SIZES["cpu" if info["platform"] == "cpu" else "accelerator"]
  for key, default in sizes.items():
    if getattr(args, key) is None:
      setattr(args, key, default)
  out = (
    args.out
    or REPO / "benchmarks" / "results" / f"convergence_{info['platform']}"
  )
  out.mkdir(parents=True, exist_ok=True)
  tokens_per_step = args.batch_size * args.seq_len
  grid = {
    o: getattr(args, f"lrs_{o}") or list(DEFAULT_LRS[o])
    for o in args.optimizers
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
      "model": args.model,
      "steps": args.steps,
      "batch_size": args.batch_size,
      "seq_len": args.seq_len,
      "tokens_per_step": tokens_per_step,
      "tokens": args.steps * tokens_per_step,
      "eval_every": args.eval_every,
      "eval_batches": args.eval_batches,
      "data": args.data,
      "tokenizer": args.tokenizer or "byte",
      "seed": args.seed,
      "alpha": args.alpha,
      "num_iters": args.num_iters,
      "adam_lr": args.adam_lr,
      "grad_clip": args.grad_clip,
      "warmup_fraction": 0.1,
      "final_lr_fraction": 0.1,
      "lr_grid": grid,
      "params": None,
    },
    "runs": [],
    "summary": [],
  }
  total = sum(len(lrs) for lrs in grid.values())
  print(
    f"{info['device_kind']} ({info['platform']}): {total} runs of {args.model}, "
    f"{args.steps} steps x {tokens_per_step} tokens -> {out}",
    flush=True,
  )
  with tempfile.TemporaryDirectory(prefix="convergence_runs_") as runs_dir:
    for optimizer, lrs in grid.items():
      for lr in lrs:
        n = len(result["runs"]) + 1
        print(f"\n[{n}/{total}] {optimizer} lr {lr:g}", flush=True)
        flags = train_argv(args, optimizer, lr, os.path.join(runs_dir, str(n)))
        summary = (
          run_training(flags)
          if args.in_process
          else _in_fresh_process(run_training, flags)
        )
        if args.in_process:
          summary["peak_memory_bytes"] = (
            None  # the maximum over all runs so far
          )
        ok = summary["status"] == "ok"
        times = step_times(summary["history"], args.eval_every)
        median = statistics.median(times) if times else None
        run = {
          "optimizer": optimizer,
          "lr": lr,
          "train_argv": flags,
          "status": summary["status"],
          # a diverged run's last evaluation is not its final loss
          "final_val_loss": summary["final_val_loss"] if ok else None,
          "final_val_ppl": summary["final_val_ppl"] if ok else None,
          "final_train_loss": summary["final_train_loss"],
          "median_step_s": median,
          # from the median step: robust to other work on a shared machine
          "train_tokens_per_s": tokens_per_step / median if median else None,
          "load_average_after": os.getloadavg(),
          "train_py_tokens_per_s": summary["tokens_per_s"],
          "wall_time_s": summary["time_s"],
          "peak_memory_bytes": summary["peak_memory_bytes"],
          "state_bytes": summary["state_bytes"],
          "param_bytes": summary["param_bytes"],
          "curve": eval_curve(summary, tokens_per_step, args.eval_every),
          "history": summary["history"],
        }
        if summary.get("params"):  # a diverged run's summary has no totals
          result["settings"]["params"] = summary["params"]
        result["runs"].append(run)
        (out / "convergence.json").write_text(json.dumps(result))

  result["summary"] = summarize(result["runs"], args.optimizers)
  (out / "convergence.json").write_text(json.dumps(result))
  table = markdown(result)
  (out / "convergence.md").write_text(table)
  plot(result, out)
  print("\n" + table, flush=True)
  return result


if __name__ == "__main__":
  main()
