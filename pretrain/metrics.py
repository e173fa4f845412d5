"""What a training run reports: a progress bar, a metrics JSONL file, and its history.

One JSON object per line, each with "kind" and "step":

    {"kind": "train", "step": s, "loss", "lr", "grad_norm", "tokens", "tokens_per_s",
     "tokens_per_s_per_device", "mfu", "peak_memory_bytes", "time_s"}
    {"kind": "eval",  "step": s, "val_loss", "val_ppl", "time_s"}

With `tensorboard=DIR` the same numbers also go to TensorBoard event files in DIR
(tensorboardX's SummaryWriter), as scalars "train/loss", "train/lr",
"train/grad_norm", "train/tokens_per_s", "eval/val_loss" and "eval/val_ppl" at
their step.

"mfu" is model FLOPs utilization (pretrain/flops.py), null on a device whose peak
is unknown; "peak_memory_bytes" the largest device's peak, null where the backend
does not report it (CPU). "time_s" is seconds since the run (or its resumption) started, taken when the record is
made: after the step's update for train records, after the evaluation for eval records.

"step" counts the updates the measured parameters have had: train step s is the loss of
the batch at data position s, before its update; eval step s is after s updates.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from pretrain.flops import mfu, peak_memory_bytes
from pretrain.paths import check_writable_dir


class RunLog:
  """Progress bar, JSONL metrics and in-memory history of one run.

  Args:
    path: the JSONL file, or None for none. On resume (`start > 0`) records past
      `start` are dropped first, so steps replayed after the last checkpoint are not
      listed twice and the file reads as one run.
    start: the first step this run takes (0, or the restored checkpoint's step).
    steps: the last step + 1.
    tokens_per_step: global batch size x sequence length.
    log_every: write a train record every N steps (and on the first and last).
    enabled: False on every process but 0: nothing is printed or written.
    progress: show a tqdm bar (on stderr).
    tensorboard: a directory for TensorBoard event files, or None for none. On
      resume, TensorBoard hides the old file's events from `start` on, which
      the resumed run writes again.
    flops_per_token: training FLOPs per token, for the MFU (None: no MFU).
    peak_flops: peak FLOP/s of one device (None: unknown, no MFU).
    devices: the devices of the run (tokens/s per device, peak memory).
  """

  def __init__(
    self,
    path: str | None,
    *,
    start: int,
    steps: int,
    tokens_per_step: int,
    log_every: int,
    enabled: bool = True,
    progress: bool = True,
    tensorboard: str | None = None,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    devices=(),
  ):
    self.path = path if enabled else None
    self.enabled = enabled
    self.start, self.steps = start, steps
    self.tokens_per_step = tokens_per_step
    self.log_every = log_every
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops
    self.devices = list(devices)
    self.history: list[dict] = []
    self.evals: list[dict] = []
    self.t0 = time.time()
    self._window = (self.t0, 0)  # (time, tokens) since the last train record
    self._evals_on_file: set[int] = set()
    if self.path is not None:
      self._evals_on_file = _keep_records_before(self.path, start)
    self._tensorboard = None
    if enabled and tensorboard is not None:
      from tensorboardX import SummaryWriter

      self._tensorboard = SummaryWriter(
        tensorboard, purge_step=start if start > 0 else None
      )
    self._bar = None
    if enabled and progress:
      from tqdm import tqdm

      self._bar = tqdm(
        total=steps,
        initial=start,
        desc="train",
        dynamic_ncols=True,
        file=sys.stderr,
      )

  def print(self, message: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def train_step(
    self, step: int, *, loss: float, grad_norm: float, lr: float
  ) -> None:
    now = time.time()
    self.history.append(
      {
        "step": step,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "time_s": now - self.t0,
      }
    )
    t_window, tokens = self._window
    tokens += self.tokens_per_step
    self._window = (t_window, tokens)
    done = step + 1
    if done % self.log_every == 0 or done == self.steps or step == self.start:
      tokens_per_s = tokens / max(now - t_window, 1e-9)
      self._window = (now, 0)
      rates = self._rates(tokens_per_s)
      self._write(
        {
          "kind": "train",
          "step": step,
          "loss": loss,
          "lr": lr,
          "grad_norm": grad_norm,
          "tokens": done * self.tokens_per_step,
          "tokens_per_s": tokens_per_s,
          **rates,
          "peak_memory_bytes": peak_memory_bytes(self.devices),
          "time_s": now - self.t0,
        }
      )
      if self._bar is not None:
        postfix = dict(
          loss=f"{loss:.3f}",
          tok_s_dev=f"{rates['tokens_per_s_per_device']:,.0f}",
          lr=f"{lr:.2e}",
        )
        if rates["mfu"] is not None:
          postfix["mfu"] = f"{100 * rates['mfu']:.1f}%"
        self._bar.set_postfix(**postfix, refresh=False)
    if self._bar is not None:
      self._bar.update(1)

  def _rates(self, tokens_per_s: float | None) -> dict:
    """tokens/s per device and MFU of a global token rate."""
    n = max(len(self.devices), 1)
    return {
      "tokens_per_s_per_device": tokens_per_s / n if tokens_per_s else None,
      "mfu": mfu(tokens_per_s, self.flops_per_token or 0, n, self.peak_flops),
    }

  def eval(self, step: int, val_loss: float) -> None:
    record = {
      "kind": "eval",
      "step": step,
      "val_loss": val_loss,
      "val_ppl": math.exp(min(val_loss, 80.0)),
      "time_s": time.time() - self.t0,
    }
    self.evals.append(record)
    if step not in self._evals_on_file:  # a run resumed at its end re-evaluates
      self._write(record)
    self.print(
      f"step {step}: val loss {val_loss:.4f}, ppl {record['val_ppl']:.2f}"
    )

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None

  def summary(self) -> dict:
    """Final losses, totals and the history of this run.

    final_train_loss is the mean over the last 10 steps (one step's loss is noisy);
    tokens_per_s leaves out the first step, which includes compilation.
    """
    tail = [h["loss"] for h in self.history[-10:]]
    timed = self.history[1:]
    span = timed[-1]["time_s"] - self.history[0]["time_s"] if timed else 0.0
    last = self.evals[-1] if self.evals else {}
    tokens_per_s = (
      len(timed) * self.tokens_per_step / span if span > 0 else None
    )
    return {
      "final_train_loss": sum(tail) / len(tail) if tail else None,
      "final_val_loss": last.get("val_loss"),
      "final_val_ppl": last.get("val_ppl"),
      "tokens": self.steps * self.tokens_per_step,
      "tokens_this_run": len(self.history) * self.tokens_per_step,
      "time_s": time.time() - self.t0,
      "tokens_per_s": tokens_per_s,
      **self._rates(tokens_per_s),
      "peak_memory_bytes": peak_memory_bytes(self.devices),
      "history": self.history,
      "evals": self.evals,
    }

  def _write(self, record: dict) -> None:
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self._tensorboard is not None:
      kind = record["kind"]
      for name in _TENSORBOARD_SCALARS[kind]:
        self._tensorboard.add_scalar(
          f"{kind}/{name}", record[name], global_step=record["step"]
        )


_TENSORBOARD_SCALARS = {
  "train": ("loss", "lr", "grad_norm", "tokens_per_s"),
  "eval": ("val_loss", "val_ppl"),
}


def check_metrics_file(path: str, *, start: int, resume: bool) -> None:
  """Raises ValueError if `RunLog(path, start=start)` could not write `path`, or
  would drop the records of an earlier run.

  A run that starts at step 0 starts a fresh file, so a file that already holds
  records is refused: continuing it needs a checkpoint to resume from, since the
  records past the restored step are the ones the resumed run replays.
  """
  if os.path.isdir(path):
    raise ValueError(f"--metrics {path} is a directory, not a file")
  check_writable_dir(os.path.dirname(os.path.abspath(path)), "--metrics")
  if start == 0 and os.path.isfile(path) and os.path.getsize(path) > 0:
    how = (
      "but there is no checkpoint to continue it from"
      if resume
      else "pass --resume to continue that run"
    )
    raise ValueError(
      f"metrics file {path} already holds records of an earlier run; {how}, "
      f"or choose another --run-dir or --metrics"
    )


def _keep_records_before(path: str, start: int) -> set[int]:
  """Truncates the file to the records of steps before `start` (all, if start = 0:
  a fresh run starts a fresh file) and the eval at `start`, which came before its
  checkpoint. Returns the steps of the evals kept."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  kept = []
  if start > 0 and os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue  # a line cut short by a kill
        step = record.get("step", 0)
        if step < start or (record.get("kind") == "eval" and step == start):
          kept.append(json.dumps(record) + "\n")
  with open(path, "w") as f:
    f.writelines(kept)
  return {r["step"] for r in map(json.loads, kept) if r.get("kind") == "eval"}
