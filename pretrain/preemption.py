"""Stopping a run on SIGTERM or SIGINT without losing its progress.

Cluster schedulers and TPU/GPU preemption send SIGTERM; Ctrl-C sends SIGINT.
While a `StopRequest` is installed, the first of either does not stop the
process: it records the request (with a note on stderr), the loop finishes the
step it is in, saves a checkpoint at that step (after any save in flight) and
exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A
second signal is ignored with a note, so a Ctrl-C pressed twice does not
abandon that save; a third exits at once (same code), leaving the checkpoints
committed before it.

Under `jax.distributed` every process must save the same step. There JAX's
preemption service owns SIGTERM (its notifier propagates the notice to every
process, and `reached_preemption_sync_point`, which orbax's
`CheckpointManager.reached_preemption` wraps, turns true at the same step on
all of them), so SIGTERM is left to it and a SIGINT is passed on to it as a
SIGTERM; `should_stop(step)` then asks the service. Repeated SIGTERMs go to
the service too, which takes only the first. With the service off
(`jax_enable_preemption_service`), nothing is installed: the signals stop
the processes as they would without a `StopRequest`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
  """The exit code of a run stopped by signal `signum`: the shell's 128 + n."""
  return 128 + int(signum)


def reached_sync_point(step: int) -> bool:
  """JAX's preemption sync point at `step` (False with the service off): for
  a run without checkpoints; one with them asks orbax's manager."""
  from jax.experimental import multihost_utils

  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # the preemption service is off
    return False


def _say(message: str) -> None:
  # os.write, not print: a handler may run in the middle of a print.
  os.write(2, (message + "\n").encode())


class StopRequest:
  """Records SIGTERM / SIGINT as a request to stop at the next step boundary.

  Args:
    prog: the name that starts each line printed (e.g. "train.py").
    distributed: several processes under `jax.distributed`: SIGTERM is left
      to JAX's preemption service, and `reached_preemption` decides.
    service: whether that service is on (`jax_enable_preemption_service`,
      JAX's default); under `jax.distributed` without it nothing is
      installed.
    reached_preemption: step -> whether every process has reached the
      preemption sync point (orbax's `CheckpointManager.reached_preemption`).
    at_once: called before a third signal exits the process; returns the
      words that say what is kept (e.g. the last finished checkpoint).

  Use as a context manager: the previous handlers come back on exit.
  """

  def __init__(
    self,
    prog: str,
    *,
    distributed: bool = False,
    service: bool = True,
    reached_preemption: Callable[[int], bool] | None = None,
    at_once: Callable[[], str] | None = None,
  ):
    self.prog = prog
    self.distributed = distributed
    self.service = service
    self.reached_preemption = reached_preemption
    self.at_once = at_once
    self.signum: int | None = None  # the first signal received
    self.count = 0
    self.saving_step: int | None = None  # set while the stop's save runs
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str | None:
    return None if self.signum is None else signal.Signals(self.signum).name

  @property
  def exit_code(self) -> int:
    """128 + the first signal; SIGTERM's when JAX's service got it."""
    return exit_code(self.signum or signal.SIGTERM)

  def install(self) -> StopRequest:
    if threading.current_thread() is not threading.main_thread():
      return self  # only the main thread may set handlers; signals stay as is
    if self.distributed and not self.service:
      # A stop seen by one process only would leave the others waiting in a
      # collective: signals keep their default effect.
      return self
    for signum in SIGNALS:
      if self.distributed and signum == signal.SIGTERM:
        continue  # JAX's preemption notifier holds it
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self) -> StopRequest:
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def _handle(self, signum: int, frame) -> None:
    del frame
    self.count += 1
    name = signal.Signals(signum).name
    if self.count == 1:
      self.signum = signum
      if self.distributed:
        # To JAX's notifier, which holds SIGTERM (below Python, so
        # signal.getsignal does not show it) and tells every process.
        signal.raise_signal(signal.SIGTERM)
      _say(
        f"{self.prog}: {name}: stopping after this step, which is saved "
        f"first (a second signal is ignored, a third exits at once)"
      )
    elif self.count == 2:
      what = (
        f"the save of step {self.saving_step} goes on"
        if self.saving_step is not None
        else "the step and its save go on"
      )
      _say(f"{self.prog}: {name} again: ignored, {what}; a third exits at once")
    else:
      kept = self.at_once() if self.at_once is not None else ""
      _say(
        f"{self.prog}: {name} a third time: exiting at once without "
        f"finishing the save" + (f"; {kept}" if kept else "")
      )
      os._exit(exit_code(self.signum))

  def should_stop(self, step: int) -> bool:
    """Whether the loop stops after `step` updates (and saves them).

    On one process: whether a signal came. Under `jax.distributed`: whether
    the preemption sync point is reached at `step`, the same on every
    process; call it at every step, with the same steps on every process.
    """
    if self.distributed and self.reached_preemption is not None:
      return bool(self.reached_preemption(step))
    return self.requested
