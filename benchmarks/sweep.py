"""The run store both sweeps share (convergence, width_transfer): one training
per (variant, lr, adam_lr, seed, corpus, extra fields), kept as a small JSON
file in OUT/runs/ and reused when asked for again.

Every run is `pretrain.trainer.train` of the `TrainConfig` train.py's own
parser makes of one flag line (`train_flags`: the variant's overrides from
`benchmarks.variants` and the sweep's sizes): train.py's model, data,
schedule and step, no second loop. A stored run is named by a hash of that
flag line, the key the store has had since variants were flag tuples; so
runs stored before are found again. The key is the settings, not the code:
delete OUT/runs/ to measure changed code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import statistics
from pathlib import Path
from typing import Any

import jax

import pretrain.cli
import pretrain.errors
import pretrain.optim
import pretrain.runtime
import pretrain.trainer
from benchmarks import common, variants
from models.llama import abstract_params
from pretrain.config import TrainConfig
from pretrain.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What every run of a sweep shares."""

  model: str
  steps: int
  batch_size: int
  seq_len: int
  eval_every: int
  eval_batches: int
  alpha: float = 0.05
  grad_clip: float = 1.0
  tokenizer: str | None = None
  # More TrainConfig fields for every run, e.g. (("attention", "xla"),):
  # keyed like a run's own extra fields, so none (the default) keeps the
  # keys of runs stored without them.
  fields: tuple[tuple[str, Any], ...] = ()


def train_flags(
  sizes: Sizes,
  variant: str,
  lr: float,
  adam_lr: float | None,
  seed: int,
  corpus: str,
  extra: dict[str, Any] | None = None,
) -> list[str]:
  """The train.py flags of one run but its --run-dir: how to rerun it by
  hand, and (hashed) its key in the store."""
  v = variants.VARIANTS[variant]
  flags = [
    *("--model", sizes.model, "--optimizer", v.optimizer),
    *("--lr", repr(lr), "--alpha", repr(sizes.alpha)),
    *("--steps", str(sizes.steps), "--batch-size", str(sizes.batch_size)),
    *("--seq-len", str(sizes.seq_len), "--grad-clip", repr(sizes.grad_clip)),
    *("--data", corpus, "--seed", str(seed)),
    *("--eval-every", str(sizes.eval_every)),
    *("--eval-batches", str(sizes.eval_batches)),
    *variants.legacy_flags(v.overrides),
  ]
  if adam_lr is not None:
    flags += ["--adam-lr", repr(adam_lr)]
  if sizes.tokenizer:
    flags += ["--tokenizer", sizes.tokenizer]
  return [
    *flags,
    *variants.legacy_flags({**dict(sizes.fields), **(extra or {})}),
    *("--ckpt-every", "0", "--metrics", "none"),
    *("--log-every", str(sizes.steps), "--no-progress"),
  ]


def run_key(flags: list[str]) -> str:
  return hashlib.sha1(" ".join(flags).encode()).hexdigest()[:16]


def train_config(
  sizes: Sizes,
  variant: str,
  lr: float,
  adam_lr: float | None,
  seed: int,
  corpus: str,
  run_dir: str,
  extra: dict[str, Any] | None = None,
) -> TrainConfig:
  """The checked config of one run: what train.py makes of its `train_flags`,
  so the run trained is the one its key and rerun command name."""
  flags = train_flags(sizes, variant, lr, adam_lr, seed, corpus, extra)
  return pretrain.cli.parse_args([*flags, "--run-dir", run_dir])


# ------------------------------------------------------------------ one run


def optimizer_state_bytes(config: TrainConfig) -> tuple[int, int]:
  """(optimizer-state bytes, parameter bytes) of `config`'s model and
  optimizer, from shapes alone."""
  model_config = pretrain.runtime.model_config(
    config, load_tokenizer(config.tokenizer)
  )
  params = abstract_params(model_config)
  tx, _ = pretrain.optim.make_optimizer(config)
  return common.tree_bytes(jax.eval_shape(tx.init, params)), common.tree_bytes(
    params
  )


def run_training(config: TrainConfig) -> dict:
  """`pretrain.trainer.train(config)`'s summary plus status ("ok" or
  "diverged"), the device's peak memory (None where the device does not
  count it) and state bytes."""
  try:
    summary, status = pretrain.trainer.train(config), "ok"
  except pretrain.errors.NonFiniteLossError as e:
    print(f"diverged: {e}", flush=True)
    summary, status = e.summary, "diverged"
  stats = jax.local_devices()[0].memory_stats()
  state_bytes, param_bytes = optimizer_state_bytes(config)
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


def runs_platform(args, sizes_by_platform: dict[str, dict]) -> dict:
  """`common.device_info()` of where the sweep's runs train, and `args`' sizes
  left unset (None) filled from `sizes_by_platform["cpu"]` or
  `["accelerator"]`. Unless `args.in_process`, the info comes from a fresh
  process: the parent never starts a JAX backend that, on a GPU, would take
  the memory the runs need."""
  info = (
    common.device_info()
    if args.in_process
    else in_fresh_process(common.device_info)
  )
  platform = "cpu" if info["platform"] == "cpu" else "accelerator"
  for key, default in sizes_by_platform[platform].items():
    if getattr(args, key, None) is None:
      setattr(args, key, default)
  return info


# ------------------------------------------------------------------ reading


def step_times(history: list[dict], eval_every: int) -> list[float]:
  """Duration of each step after the first (which compiles), in order; a step
  that ran right after an evaluation is given the median duration instead."""
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


def final_loss(run: dict) -> float:
  """The run's final validation loss; inf for a diverged or unusable run, so
  that it loses every comparison."""
  loss = run.get("final_val_loss")
  if run["status"] != "ok" or loss is None or not math.isfinite(loss):
    return math.inf
  return loss


# ------------------------------------------------------------------ the store


class Runner:
  """Runs (or reuses from `out/runs/`) one training; returns its record.

  `sizes`: what every run shares; `in_process`: train here (else in a fresh
  process each, so peak memory is the run's own); `cached_only`: train
  nothing, note what is missing; `records`: a `RecordWriter` each run's
  record is also appended to as it finishes.
  """

  def __init__(
    self,
    sizes: Sizes,
    out: Path,
    scratch: str,
    *,
    in_process: bool = False,
    cached_only: bool = False,
    records=None,
  ):
    self.sizes, self.scratch = sizes, scratch
    self.in_process, self.cached_only = in_process, cached_only
    self.records = records
    self.cache = out / "runs"
    self.cache.mkdir(parents=True, exist_ok=True)
    self.count = 0
    self._kept = set()
    self.missing = []  # (variant, lr, adam_lr, seed, corpus) not stored

  def __call__(
    self,
    variant: str,
    lr: float,
    adam_lr: float | None,
    seed: int,
    corpus: str,
    extra: dict[str, Any] | None = None,
  ) -> dict | None:
    point = (variant, lr, adam_lr, seed, corpus)
    flags = train_flags(self.sizes, *point, extra)
    path = self.cache / f"{variant}-{run_key(flags)}.json"
    if path.exists():
      return self._keep(path, json.loads(path.read_text()))
    if self.cached_only:
      self.missing.append(point)
      return None
    self.count += 1
    label = f"{variant} lr {lr:g}" + (
      f" adam_lr {adam_lr:g}" if adam_lr is not None else ""
    )
    print(
      f"\n[run {self.count}] {label}, seed {seed}, {corpus} {extra or ''}",
      flush=True,
    )
    run_dir = os.path.join(self.scratch, str(self.count))
    config = train_config(self.sizes, *point, run_dir, extra)
    summary = (
      run_training(config)
      if self.in_process
      else in_fresh_process(run_training, config)
    )
    record = self._record(point, flags, summary)
    path.write_text(json.dumps(record))
    return self._keep(path, record)

  def _keep(self, path: Path, record: dict) -> dict:
    """`record`, appended to the records the first time it is asked for."""
    if self.records is not None and path.name not in self._kept:
      self._kept.add(path.name)
      self.records.write(record)
    return record

  def _record(self, point, flags, summary) -> dict:
    variant, lr, adam_lr, seed, corpus = point
    ok = summary["status"] == "ok"
    times = step_times(summary["history"], self.sizes.eval_every)
    median = statistics.median(times) if times else None
    tokens_per_step = self.sizes.batch_size * self.sizes.seq_len
    return {
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
      if self.in_process
      else summary["peak_memory_bytes"],
      "state_bytes": summary["state_bytes"],
      "param_bytes": summary["param_bytes"],
      "params": summary.get("params"),
      "curve": [
        {"step": e["step"], "val_loss": e["val_loss"]} for e in summary["evals"]
      ],
    }
