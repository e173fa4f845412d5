"""pretrain/lock.py: one writer per run directory, across processes."""

import os
import signal
import subprocess
import sys

import pytest

from pretrain.errors import ExitCode, InUseError
from pretrain.lock import LOCK_NAME, RunLocks, lock_targets
from tests.pretrain.runs import Run, snapshot, train_losses

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# Takes the run dir's lock, says so, and holds it until stdin closes.
HOLD = """
import sys
from pretrain.lock import RunLocks, lock_targets
locks = RunLocks(lock_targets(sys.argv[1], sys.argv[1] + "/ckpt", None))
print("locked", flush=True)
sys.stdin.read()
locks.release()
"""


def holder(run_dir):
  """A process holding `run_dir`'s lock (returns once it holds it)."""
  proc = subprocess.Popen(
    [sys.executable, "-c", HOLD, str(run_dir)],
    cwd=REPO,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline() == "locked\n"
  return proc


def test_run_dir_held_by_another_process_is_refused_naming_its_pid(tmp_path):
  run_dir = tmp_path / "run"
  proc = holder(run_dir)
  try:
    with pytest.raises(InUseError) as e:
      RunLocks(lock_targets(str(run_dir), None, str(run_dir / "m.jsonl")))
    message = str(e.value)
    assert "\n" not in message
    assert f"--run-dir {run_dir} is in use by process {proc.pid}" in message
  finally:
    proc.stdin.close()
    proc.wait(timeout=60)
  # The holder has ended: the lock is free, and its file went with it.
  assert not (run_dir / LOCK_NAME).exists()
  with RunLocks(lock_targets(str(run_dir), None, str(run_dir / "m.jsonl"))):
    assert (run_dir / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_lock_left_by_a_killed_process_is_free_to_take(tmp_path):
  run_dir = tmp_path / "run"
  proc = holder(run_dir)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  lock_file = run_dir / LOCK_NAME
  assert lock_file.read_text().split()[0] == str(proc.pid)  # left behind
  with RunLocks(lock_targets(str(run_dir), str(run_dir / "ckpt"), None)):
    assert lock_file.read_text().split()[0] == str(os.getpid())
  assert not lock_file.exists()


def test_second_lock_in_one_process_is_refused_too(tmp_path):
  targets = lock_targets(str(tmp_path), str(tmp_path / "ckpt"), None)
  with RunLocks(targets), pytest.raises(InUseError, match="is in use by"):
    RunLocks(targets)


def test_outputs_outside_the_run_dir_get_their_own_locks(tmp_path):
  run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
  inside = lock_targets(str(run_dir), str(run_dir / "ckpt"), str(run_dir / "m"))
  assert inside == [(str(run_dir / LOCK_NAME), f"--run-dir {run_dir}")]
  ckpt, metrics = elsewhere / "ckpt", elsewhere / "m.jsonl"
  outside = lock_targets(str(run_dir), str(ckpt), str(metrics))
  assert outside == [
    (str(ckpt / LOCK_NAME), f"--ckpt-dir {ckpt}"),
    (f"{metrics}.lock", f"--metrics {metrics}"),
  ]
  # Nothing written to the run dir: it is not locked, so two runs with
  # their own --ckpt-dir and --metrics may share the default one.
  assert lock_targets(str(run_dir), None, None) == []
  # A metrics file shared by two runs with separate run dirs is one lock.
  shared = lock_targets(str(tmp_path / "other"), None, str(metrics))
  with (
    RunLocks(lock_targets(str(run_dir), None, str(metrics))),
    pytest.raises(InUseError, match=f"--metrics {metrics} is in use"),
  ):
    RunLocks(shared)


def test_refused_lock_keeps_none_and_tidy_release_leaves_nothing(tmp_path):
  run_dir, ckpt = tmp_path / "run", tmp_path / "a" / "b" / "ckpt"
  with RunLocks(lock_targets(str(tmp_path / "other"), str(ckpt), None)):
    # The run dir's lock is taken, then the ckpt dir's refused: both dropped.
    with pytest.raises(InUseError):
      RunLocks(lock_targets(str(run_dir), str(ckpt), str(run_dir / "m")))
    assert not run_dir.exists()
  fresh = tmp_path / "fresh"
  locks = RunLocks(
    lock_targets(str(fresh / "run"), str(fresh / "c" / "d"), None)
  )
  assert (fresh / "c" / "d" / LOCK_NAME).exists()
  locks.release(tidy=True)  # what a run refused for bad input does
  assert not fresh.exists()


def test_second_train_py_on_a_run_dir_in_use_is_refused_and_changes_nothing(
  tmp_path, uninterrupted
):
  first = Run(tmp_path, "--ckpt-every", "2", pauses="log=1")
  first.wait_for("paused at log 1")
  before = snapshot(tmp_path)
  lock = os.path.realpath(tmp_path / LOCK_NAME)
  for flags in ([], ["--resume"]):  # with another lr: another run
    second = Run(tmp_path, "--ckpt-every", "2", "--lr", "0.1", *flags)
    assert second.finish() == ExitCode.IN_USE
    assert second.last_err_line == (
      f"train.py: error: --run-dir {os.path.realpath(tmp_path)} is in use by "
      f"process {first.proc.pid} (it holds {lock}); wait for it to end or "
      "choose another one"
    )
    assert "".join(second.err).count("\n") == 1
  assert snapshot(tmp_path) == before
  first.go_on()
  assert first.finish() == 0
  assert train_losses(tmp_path) == uninterrupted
