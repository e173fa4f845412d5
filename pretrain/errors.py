"""How a run ends when it does not succeed: the exceptions and the exit codes.

Every failure a user can cause or meet is one of these exceptions, so the
command line (`pretrain.cli.main`) can print one line and exit with the code
of this table, and code that calls `pretrain.trainer.train` directly can catch
the same classes.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
  """The exit status of `python train.py` / `mno-train` (README, "Safety")."""

  OK = 0
  BAD_INPUT = 1  # data, tokenizer, paths, checkpoints that do not fit the run
  BAD_FLAG = 2  # a flag that does not parse, or a value outside its bounds
  DIVERGED = 3  # the loss, gradient or parameters went NaN/Inf
  SAVE_FAILED = 4  # a checkpoint could not be written
  OUTPUT_FAILED = 5  # the metrics could not be written (a full disk)
  IN_USE = 6  # another process holds the run directory's lock
  INTERRUPTED = 130  # SIGINT (128 + 2): stopped after saving its step
  TERMINATED = 143  # SIGTERM (128 + 15), e.g. a preemption: likewise


class ConfigError(ValueError):
  """A `TrainConfig` value outside its bounds or choices; the message is one
  line that names the flag and what it allows."""


class NonFiniteLossError(RuntimeError):
  """The loss, gradient or parameters went NaN/Inf; `summary` holds the run so far."""

  def __init__(self, message: str, summary: dict):
    super().__init__(message)
    self.summary = summary


class SaveError(RuntimeError):
  """A checkpoint save failed; the message is one line naming the step."""


class OutputError(RuntimeError):
  """Writing an output of the run (its metrics) failed, e.g. on a full disk.

  The message is one line; what was written before stays whole.
  """


class InUseError(RuntimeError):
  """An output of the run is locked by another process; the message is one
  line naming it and the holder's pid."""


class Stopped(RuntimeError):
  """The run stopped on SIGTERM or SIGINT after saving the step it was in.

  `code` is the exit code (128 + the signal), `summary` the run so far; the
  message is one line naming the checkpoint saved.
  """

  def __init__(self, message: str, code: int, summary: dict):
    super().__init__(message)
    self.code = code
    self.summary = summary
