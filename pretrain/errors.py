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
  INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


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
