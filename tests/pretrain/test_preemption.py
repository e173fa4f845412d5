"""pretrain/preemption.py: a stop request from SIGTERM / SIGINT, alone and in
train.py, whose stopped runs resume bit for bit."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pretrain import preemption
from pretrain.checkpoint import complete_steps
from pretrain.errors import ExitCode
from pretrain.preemption import StopRequest, exit_code
from tests.pretrain.runs import Run, train_losses

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


def err_until(capfd, text, timeout=30):
  """stderr up to and with the line holding `text` (polled, a note is
  written by the watcher thread a moment after the signal)."""
  err, deadline = "", time.monotonic() + timeout
  while text not in err:
    assert time.monotonic() < deadline, err
    err += capfd.readouterr().err
    time.sleep(0.001)
  return err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_is_a_request_and_the_second_is_ignored(signum, capfd):
  before = signal.getsignal(signum)
  name = signal.Signals(signum).name
  with StopRequest("train.py") as stop:
    assert not stop.should_stop(3)
    os.kill(os.getpid(), signum)
    assert err_until(capfd, "stopping") == (
      f"train.py: {name}: stopping after this step, which is saved first "
      "(a second signal is ignored, a third exits at once)\n"
    )
    assert stop.requested and stop.should_stop(3)
    assert stop.exit_code == exit_code(signum) == 128 + signum
    stop.saving_step = 4
    os.kill(os.getpid(), signum)
    assert err_until(capfd, "again") == (
      f"train.py: {name} again: ignored, the save of step 4 goes on; a third "
      "exits at once\n"
    )
    assert stop.signum == signum and stop.count == 2
  assert signal.getsignal(signum) == before
  assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd given back too


def test_the_first_signal_decides_the_exit_code(capfd):
  with StopRequest("train.py") as stop:
    os.kill(os.getpid(), signal.SIGINT)
    err_until(capfd, "SIGINT: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
    err_until(capfd, "SIGTERM again")
  assert stop.exit_code == 130


# Installs a stop request, says so, then hangs its main thread (as a hung save
# would) with the signals blocked there, so the kernel gives them to another
# thread: Python would run its handlers only once the main thread is back.
IDLE = """
import signal, threading
from pretrain.preemption import StopRequest
stop = StopRequest("t", at_once=lambda: "last finished checkpoint: ckpt/2")
stop.install()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
print("ready", flush=True)
hung = threading.Lock()
hung.acquire()
hung.acquire()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_third_signal_exits_at_once_even_with_the_main_thread_stuck(signum):
  proc = subprocess.Popen(
    [sys.executable, "-c", IDLE],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline() == "ready\n"
  notes = []
  for _ in range(3):
    proc.send_signal(signum)
    notes.append(proc.stderr.readline())
  assert proc.wait(timeout=60) == 128 + signum
  name = signal.Signals(signum).name
  assert notes[0].startswith(f"t: {name}: stopping after this step")
  assert notes[1].startswith(f"t: {name} again: ignored")
  assert notes[2] == (
    f"t: {name} a third time: exiting at once without finishing the save; "
    "last finished checkpoint: ckpt/2\n"
  )


def test_under_jax_distributed_the_preemption_service_decides():
  asked = []

  def reached(step):
    asked.append(step)
    return step == 7

  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with StopRequest("t", distributed=True, reached_preemption=reached) as stop:
    assert [stop.should_stop(s) for s in (5, 6, 7)] == [False, False, True]
    assert signal.getsignal(signal.SIGINT) == preemption._ignore
    assert signal.getsignal(signal.SIGTERM) == before[1]  # left to JAX
  assert asked == [5, 6, 7] and stop.exit_code == 143
  assert (
    signal.getsignal(signal.SIGINT),
    signal.getsignal(signal.SIGTERM),
  ) == before


def test_under_jax_distributed_without_the_service_nothing_is_installed():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  off = StopRequest("t", distributed=True, service=False)
  with off:
    assert (
      signal.getsignal(signal.SIGINT),
      signal.getsignal(signal.SIGTERM),
    ) == before


# ------------------------------------------------------------------ train.py


def signalled_twice(run_dir, signum) -> Run:
  """A run (--ckpt-every 2) sent `signum` after step 2, and again inside the
  write of step 3: the save the first signal asked for, as step 3 is the one
  the loop was in (although --ckpt-every is 2). Left paused in that write."""
  name = signal.Signals(signum).name
  run = Run(run_dir, "--ckpt-every", "2", pauses="log=2,write=3")
  run.wait_for("paused at log 2")
  run.signal(signum, f"{name}: stopping after this step")
  run.go_on()
  run.wait_for("paused at write 3")
  run.signal(signum, f"{name} again: ignored, the save of step 3")
  return run


def test_sigterm_saves_its_step_ignores_a_second_and_resumes_bitwise(
  tmp_path, uninterrupted
):
  stopped = signalled_twice(tmp_path, signal.SIGTERM)
  stopped.go_on()
  assert stopped.finish() == ExitCode.TERMINATED == 143
  ckpt = tmp_path / "ckpt"
  assert stopped.last_err_line == (
    f"train.py: stopped by SIGTERM after step 3: saved checkpoint {ckpt}/3; "
    "continue with --resume"
  )
  assert complete_steps(ckpt) == [2, 3]
  resumed = Run(tmp_path, "--ckpt-every", "2", "--resume")
  assert resumed.finish() == 0, "".join(resumed.err)[-2000:]
  assert train_losses(tmp_path) == uninterrupted


def test_ctrl_c_before_the_first_save_saves_its_step_and_resumes_bitwise(
  tmp_path, uninterrupted
):
  stopped = Run(tmp_path, "--ckpt-every", "4", pauses="log=1")
  stopped.wait_for("paused at log 1")
  stopped.signal(signal.SIGINT, "SIGINT: stopping after this step")
  stopped.go_on()
  assert stopped.finish() == ExitCode.INTERRUPTED == 130
  assert stopped.last_err_line.startswith(
    "train.py: stopped by SIGINT after step 2: saved checkpoint"
  )
  assert complete_steps(tmp_path / "ckpt") == [2]
  resumed = Run(tmp_path, "--ckpt-every", "4", "--resume")
  assert resumed.finish() == 0
  assert train_losses(tmp_path) == uninterrupted


def test_ctrl_c_during_the_first_save_lets_it_finish_then_saves_and_stops(
  tmp_path, uninterrupted
):
  stopped = Run(tmp_path, "--ckpt-every", "2", pauses="write=2")
  stopped.wait_for("paused at write 2")  # orbax's background write
  stopped.signal(signal.SIGINT, "SIGINT: stopping after this step")
  stopped.signal(signal.SIGINT, "SIGINT again: ignored")
  stopped.go_on()
  assert stopped.finish() == 130
  # The loop went on while step 2 was written: it stops at whichever step
  # it was in, saved, after step 2's save committed.
  line = stopped.last_err_line
  assert line.startswith("train.py: stopped by SIGINT after step "), line
  at = int(line.split("after step ")[1].split(":")[0])
  assert complete_steps(tmp_path / "ckpt")[:1] == [2]
  assert complete_steps(tmp_path / "ckpt")[-1] == at
  assert not [p for p in os.listdir(tmp_path / "ckpt") if "tmp" in p]
  resumed = Run(tmp_path, "--ckpt-every", "2", "--resume")
  assert resumed.finish() == 0
  assert train_losses(tmp_path) == uninterrupted


def test_third_signal_exits_during_the_stop_save_and_the_run_requeues(
  tmp_path, uninterrupted
):
  stopped = signalled_twice(tmp_path, signal.SIGINT)
  stopped.signal(signal.SIGINT)
  assert stopped.finish() == 130
  ckpt = tmp_path / "ckpt"
  assert stopped.last_err_line == (
    "train.py: SIGINT a third time: exiting at once without finishing the "
    f"save; last finished checkpoint: {ckpt}/2"
  )
  assert complete_steps(ckpt) == [2]
  requeued = Run(tmp_path, "--ckpt-every", "2", "--resume")
  assert requeued.finish() == 0
  assert "note: moved unfinished saves" in "".join(requeued.out)
  assert train_losses(tmp_path) == uninterrupted


def test_sigterm_to_one_of_two_processes_stops_both_at_one_saved_step(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  procs = [
    Run(
      tmp_path,
      *["--steps", "40", "--ckpt-every", "20", "--cpu-devices", "2"],
      *["--coordinator", address, "--num-processes", "2"],
      *["--process-id", str(i)],
      pauses="log=2",
    )
    for i in range(2)
  ]
  for p in procs:
    p.wait_for("paused at log 2")
  # JAX's preemption notifier takes it and tells the other process.
  procs[1].signal(signal.SIGTERM, "SIGTERM caught")
  for p in procs:
    p.go_on()
  codes = [p.finish() for p in procs]
  lines = [p.last_err_line for p in procs]
  assert codes == [143, 143], lines
  assert lines[0] == lines[1], lines
  assert lines[0].startswith("train.py: stopped by SIGTERM after step "), lines
  at = int(lines[0].split("after step ")[1].split(":")[0])
  assert 2 < at < 40
  assert complete_steps(tmp_path / "ckpt")[-1] == at
