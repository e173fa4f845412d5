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

"step" counts the updates done when the record is made, as checkpoint steps do:
train step s is the s-th update (its batch is at data position s - 1; the loss
is measured before the update), eval step s is after s updates. Files written
before this convention numbered train records from 0 (step s - 1 for the s-th
update); a resume renumbers their records, found by "tokens" = (step + 1) x
tokens per step, so the file reads in one convention.

A number that is not finite is written as null (JSON has no NaN or Infinity).
A write that fails (a full disk) raises `OutputError` after cutting the file
back to its last whole record.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

from pretrain.errors import OutputError
from pretrain.flops import mfu, peak_memory_bytes
from pretrain.paths import check_writable_dir


class RunLog:
  """Progress bar, JSONL metrics and in-memory history of one run.

  Args:
    path: the JSONL file, or None for none. On resume (`start > 0`) records past
      `start` are dropped first, so steps replayed after the last checkpoint are not
      listed twice and the file reads as one run; lines that are not a record
      with an integer step are moved to `<path>.unreadable`. At `start = 0` a
      file that holds records (a run stopped before its first checkpoint, which
      `check_metrics_file` lets through only with --resume) is moved aside to
      `<path>.unfinished` (or `.unfinished.N`), never truncated. `notes` says
      what was moved.
    start: the updates already done (0, or the restored checkpoint's step).
    steps: the last step + 1.
    tokens_per_step: global batch size x sequence length.
    log_every: write a train record every N steps (and on the first and last).
    enabled: False on every process but 0: nothing is printed or written.
    progress: show a tqdm bar (on stderr).
    tensorboard: a directory for TensorBoard event files, or None for none. On
      resume, TensorBoard hides the old file's events past `start`, which
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
    self.notes: list[str] = []
    if self.path is not None:
      self._evals_on_file, self.notes = continue_file(
        self.path, start, tokens_per_step
      )
    self._tensorboard = None
    if enabled and tensorboard is not None:
      from tensorboardX import SummaryWriter

      # Events past `start` are hidden: the run writes them again.
      self._tensorboard = SummaryWriter(tensorboard, purge_step=start + 1)
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
    """Logs the update of the batch at data position `step` (0-based): its
    record's step is `step + 1`, the updates done once it is applied."""
    now = time.time()
    done = step + 1
    self.history.append(
      {
        "step": done,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "time_s": now - self.t0,
      }
    )
    t_window, tokens = self._window
    tokens += self.tokens_per_step
    self._window = (t_window, tokens)
    if done % self.log_every == 0 or done == self.steps or step == self.start:
      tokens_per_s = tokens / max(now - t_window, 1e-9)
      self._window = (now, 0)
      rates = self._rates(tokens_per_s)
      self._write(
        {
          "kind": "train",
          "step": done,
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
      try:
        append_line(self.path, json_line(record))
      except OSError as e:
        raise OutputError(
          f"writing metrics to {self.path} failed at step {record['step']} "
          f"({e.strerror or e}); stopped"
        ) from None
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
  would set aside the records of an earlier run that --resume does not ask to
  continue.

  A run that starts at step 0 starts a fresh file, so a file that already holds
  records is refused unless `resume`: with it, a run that left no checkpoint
  (stopped before its first save) starts again from step 0 and `RunLog` moves
  its records aside.
  """
  if os.path.isdir(path):
    raise ValueError(f"--metrics {path} is a directory, not a file")
  check_writable_dir(os.path.dirname(os.path.abspath(path)), "--metrics")
  if (
    start == 0
    and not resume
    and os.path.isfile(path)
    and os.path.getsize(path) > 0
  ):
    raise ValueError(
      f"metrics file {path} already holds records of an earlier run; pass "
      f"--resume to continue that run, or choose another --run-dir or "
      f"--metrics"
    )


def json_line(record: dict) -> str:
  """`record` as one line of standard JSON: a non-finite float is null."""

  def finite(v):
    if isinstance(v, float) and not math.isfinite(v):
      return None
    if isinstance(v, dict):
      return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
      return [finite(x) for x in v]
    return v

  return json.dumps(finite(record), allow_nan=False) + "\n"


def append_line(path: str, line: str) -> None:
  """Appends `line` to `path` in unbuffered writes; on failure, cuts the file
  back to its size before, so that it never ends in half a record."""
  data = line.encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      while data:
        data = data[os.write(fd, data) :]
    except OSError:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, size)
      raise
  finally:
    os.close(fd)


def _record(line: str) -> dict | None:
  """The record of one line, or None unless it is a JSON object with an
  integer step."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  if not isinstance(record, dict):
    return None
  step = record.get("step")
  if not isinstance(step, int) or isinstance(step, bool):
    return None
  return record


def _free_name(path: str) -> str:
  n, target = 0, path
  while os.path.lexists(target):
    n += 1
    target = f"{path}.{n}"
  return target


def continue_file(
  path: str, start: int, tokens_per_step: int
) -> tuple[set[int], list[str]]:
  """Prepares the metrics file of a run that has done `start` updates.

  At `start = 0` a file holding records is moved aside whole. Otherwise the
  records of steps up to `start` stay (the eval at `start` came before its
  checkpoint), those past it go (the run replays them); old-convention train
  records are renumbered and lines that are no record move to
  `<path>.unreadable`. The file is replaced atomically.

  Returns:
    (steps of the evals kept, notes on what was moved or renumbered).

  Raises:
    OutputError: the file cannot be rewritten (nothing is lost then).
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  exists = os.path.isfile(path) and os.path.getsize(path) > 0
  if start == 0:
    if not exists:
      open(path, "w").close()
      return set(), []
    aside = _free_name(path + ".unfinished")
    _replace(path, aside, rename=True)
    open(path, "w").close()
    return set(), [
      f"no finished checkpoint to resume from: starting at step 0; the "
      f"earlier records of {path} were moved to {aside}"
    ]
  kept, unreadable, renumbered = [], [], 0
  if exists:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        record = _record(line)
        if record is None:
          if line.strip():
            unreadable.append(
              (number, line if line.endswith("\n") else line + "\n")
            )
          continue
        if (
          record.get("kind") == "train"
          and record.get("tokens") == (record["step"] + 1) * tokens_per_step
        ):
          record["step"] += 1  # numbered from 0, before one convention
          renumbered += 1
        if record["step"] <= start:
          kept.append(record)
  notes = []
  if unreadable:
    target = path + ".unreadable"
    try:
      with open(target, "a") as f:
        f.writelines(line for _, line in unreadable)
    except OSError as e:
      raise OutputError(
        f"cannot set aside the unreadable lines of {path} to {target} "
        f"({e.strerror}); nothing was changed"
      ) from None
    numbers = ", ".join(str(n) for n, _ in unreadable[:5])
    more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
    notes.append(
      f"{len(unreadable)} unreadable line(s) of {path} (line {numbers}{more}) "
      f"moved to {target}"
    )
  if renumbered:
    notes.append(
      f"{renumbered} train record(s) of {path} renumbered to count completed "
      f"steps (their step + 1), as this version writes them"
    )
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "w") as f:
      f.writelines(json_line(r) for r in kept)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise OutputError(
      f"cannot rewrite {path} to continue it ({e.strerror}); it is unchanged"
    ) from None
  _replace(tmp, path)
  return {r["step"] for r in kept if r.get("kind") == "eval"}, notes


def _replace(source: str, target: str, *, rename: bool = False) -> None:
  try:
    (os.rename if rename else os.replace)(source, target)
  except OSError as e:
    raise OutputError(
      f"cannot move {source} to {target} ({e.strerror}); it is unchanged"
    ) from None
