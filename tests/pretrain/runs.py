"""Shared by the pretrain tests: a small real corpus, the flags of a short run,
and helpers to read what a run wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import jax
import numpy as np

from pretrain.cli import parse_args
from pretrain.trainer import train

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# A small real corpus (the stdlib's json package: ~32k train tokens) keeps runs short.

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")

STEPS = 6
# 6 steps of 8 x 32 tokens; no evaluation unless a test asks for it.

SMALL = [
  "--data",
  DATA,
  "--steps",
  str(STEPS),
  "--batch-size",
  "8",
  "--seq-len",
  "32",
  "--eval-batches",
  "0",
  "--log-every",
  "1",
  "--no-progress",
]


def run(tmp, *flags):
  """train in this process; returns its summary."""
  return train(parse_args(SMALL + ["--run-dir", str(tmp), *flags]))


def losses(summary):
  return np.array([h["loss"] for h in summary["history"]])


def snapshot(directory):
  """Every file under `directory` with its size and mtime: to see that nothing moved."""
  found = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      found[os.path.relpath(os.path.join(root, name), directory)] = (
        st.st_size,
        st.st_mtime_ns,
      )
  return found


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def assert_trees_close(a, b, rtol):
  """Every leaf of `a` within relative Frobenius distance `rtol` of `b`'s."""
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  ):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
    assert rel <= rtol, (jax.tree_util.keystr(path), rel)


# The flags of the fsdp8 fixture's run (conftest.py) but its checkpoint ones:
# what a run resuming it repeats.
FSDP8 = ["--mesh", "fsdp=8", "--eval-batches", "1", "--eval-every", "3"]


# ------------------------------------------------------------------ runs that stop

# train.py with pauses, for stopping a run at a known point without sleeping:
# argv[1] lists them, e.g. "log=2,write=3": after the train record of step 2,
# inside orbax's background write of step 3. At each, the run prints
# "paused at ..." on stdout and waits for a line on stdin.
PAUSABLE = """
import runpy, sys
from pretrain import metrics
pauses = dict(p.split("=") for p in sys.argv.pop(1).split(",") if p)

def pause(what):
  print(f"paused at {what}", flush=True)
  sys.stdin.readline()

if "log" in pauses:
  train_step = metrics.RunLog.train_step
  def logged(self, step, **kw):
    train_step(self, step, **kw)
    if step + 1 == int(pauses["log"]):
      pause(f"log {step + 1}")
  metrics.RunLog.train_step = logged
if "write" in pauses:
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as h
  save_fn, held = h.JsonCheckpointHandler._save_fn, []
  async def writing(self, x, directory):
    if directory.parent.name.startswith(pauses["write"] + ".") and not held:
      held.append(1)
      pause(f"write {pauses['write']}")
    return await save_fn(self, x, directory)
  h.JsonCheckpointHandler._save_fn = writing
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""
# The flags of the stopped runs and of the uninterrupted one they must match.
STOPPED = [*SMALL, "--keep", "0"]


class Run:
  """`python train.py` (with `PAUSABLE`'s pauses) in a subprocess of REPO."""

  def __init__(self, run_dir, *flags, pauses: str = ""):
    self.proc = subprocess.Popen(
      [sys.executable, "-c", PAUSABLE, pauses, *STOPPED]
      + ["--run-dir", str(run_dir), *flags],
      cwd=REPO,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    self.out: list[str] = []
    self.err: list[str] = []

  def wait_for(self, text: str, stream: str = "out") -> str:
    """Reads `stream` up to the line holding `text` and returns that line."""
    pipe, lines = (
      (self.proc.stdout, self.out)
      if stream == "out"
      else (self.proc.stderr, self.err)
    )
    while True:
      line = pipe.readline()
      if not line:
        self.proc.kill()
        raise AssertionError(
          f"the run ended before {text!r}:\n" + "".join(lines[-20:])
        )
      lines.append(line)
      if text in line:
        return line

  def signal(self, signum, note: str | None = None) -> str | None:
    """Sends `signum`; with `note`, waits for the stderr line holding it."""
    self.proc.send_signal(signum)
    return None if note is None else self.wait_for(note, "err")

  def go_on(self) -> None:
    self.proc.stdin.write("\n")
    self.proc.stdin.flush()

  def finish(self, timeout=300) -> int:
    out, err = self.proc.communicate(timeout=timeout)
    self.out.append(out)
    self.err.append(err)
    return self.proc.returncode

  @property
  def last_err_line(self) -> str:
    return "".join(self.err).strip().splitlines()[-1]


def train_losses(run_dir) -> list[float]:
  """The train records' losses of `run_dir`'s metrics.jsonl, in step order;
  every step exactly once."""
  records = [
    r
    for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    if r["kind"] == "train"
  ]
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  return [r["loss"] for r in records]
