"""pretrain/preemption.py: a stop request from SIGTERM / SIGINT, without a loop."""

import os
import signal
import subprocess
import sys

import pytest

from pretrain.preemption import StopRequest, exit_code

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_is_a_request_and_the_second_is_ignored(signum, capfd):
  before = signal.getsignal(signum)
  with StopRequest("train.py") as stop:
    assert not stop.should_stop(3)
    os.kill(os.getpid(), signum)  # handled here, at the next bytecode
    assert stop.requested and stop.should_stop(3)
    assert stop.exit_code == exit_code(signum) == 128 + signum
    name = signal.Signals(signum).name
    first = capfd.readouterr().err
    assert first == (
      f"train.py: {name}: stopping after this step, which is saved first "
      "(a second signal is ignored, a third exits at once)\n"
    )
    stop.saving_step = 4
    os.kill(os.getpid(), signum)
    assert capfd.readouterr().err == (
      f"train.py: {name} again: ignored, the save of step 4 goes on; a third "
      "exits at once\n"
    )
    assert stop.signum == signum and stop.count == 2
  assert signal.getsignal(signum) == before


def test_the_first_signal_decides_the_exit_code():
  with StopRequest("train.py") as stop:
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
  assert stop.exit_code == 130


# Installs a stop request, says so, and idles; every line of stderr is a
# note, so the parent sends the next signal once it has read the last note.
IDLE = """
import sys, time
from pretrain.preemption import StopRequest
stop = StopRequest("t", at_once=lambda: "last finished checkpoint: ckpt/2")
stop.install()
print("ready", flush=True)
while True:
  time.sleep(0.01)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_third_signal_exits_at_once(signum):
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


def test_under_jax_distributed_the_preemption_service_decides(monkeypatch):
  asked = []

  def reached(step):
    asked.append(step)
    return step == 7

  getsignal = signal.getsignal
  before = getsignal(signal.SIGINT)
  # As after jax.distributed.initialize: a SIGTERM handler from outside Python.
  monkeypatch.setattr(
    signal, "getsignal", lambda s: None if s == signal.SIGTERM else getsignal(s)
  )
  with StopRequest("t", distributed=True, reached_preemption=reached) as stop:
    assert [stop.should_stop(s) for s in (5, 6, 7)] == [False, False, True]
    assert getsignal(signal.SIGINT) == stop._handle  # SIGTERM left to JAX
    assert getsignal(signal.SIGTERM) == signal.SIG_DFL
  assert asked == [5, 6, 7] and stop.exit_code == 143
  assert getsignal(signal.SIGINT) == before


def test_under_jax_distributed_without_the_service_nothing_is_installed():
  stop = StopRequest("t", distributed=True, reached_preemption=lambda s: False)
  with stop:
    assert stop._previous == {}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
