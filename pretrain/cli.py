"""The command line of `python train.py` / `mno-train`.

The parser is generated from `TrainConfig`'s fields (flag, help, choices,
group and environment default from each field's metadata), so a default or a
bound lives in one place. Errors are one line and an `ExitCode`:

    python train.py --steps 0     ->  train.py: error: --steps must be at least 1, got 0  (2)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pretrain.checkpoint import SaveError
from pretrain.command import OneLineParser, prog_name
from pretrain.config import GROUPS, TrainConfig, field_type, flag_name
from pretrain.errors import (
  ConfigError,
  ExitCode,
  InUseError,
  NonFiniteLossError,
  OutputError,
  Stopped,
)

PROG = "train.py"
DESCRIPTION = (
  "Pretrain a LLaMA with SinkGD (or SWAN, AdamW, Adafactor, Muon, SGD) on a "
  "device mesh."
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """An argparse parser with one flag per `TrainConfig` field, in its group."""
  p = OneLineParser(prog=prog, description=DESCRIPTION)
  groups = {g: p.add_argument_group(g) for g in GROUPS}
  for field in dataclasses.fields(TrainConfig):
    meta = field.metadata
    kind = field_type(field)
    kwargs = {"help": meta["help"]}
    if kind is bool:
      kwargs["action"] = "store_true"
    else:
      default = field.default
      if meta["env"] is not None:
        default = os.environ.get(meta["env"], default)
      kwargs.update(type=kind, default=default)
      if meta["choices"] is not None:
        kwargs["choices"] = meta["choices"]
      if meta["metavar"] is not None:
        kwargs["metavar"] = meta["metavar"]
    groups[meta["group"]].add_argument(flag_name(field.name), **kwargs)
  return p


def parse_args(argv=None, prog: str = PROG) -> TrainConfig:
  """The command line as a checked `TrainConfig`; a bad flag or value exits
  (`ExitCode.BAD_FLAG`) with one line."""
  p = build_parser(prog)
  args = p.parse_args(argv)
  try:
    return TrainConfig(**vars(args))
  except ConfigError as e:
    p.error(str(e))


def main(argv=None, prog: str = PROG) -> int:
  """Trains as the command line says; returns an `ExitCode`: 0 on success, 1
  on bad input (2 for a bad flag or value), 3 when training diverged, 4 when
  a checkpoint could not be saved, 5 when the metrics could not be written,
  6 when another run holds the run directory, 130 / 143 when SIGINT / SIGTERM
  stopped the run (after saving its step)."""
  from pretrain.trainer import train  # after the flags: --help stays fast

  try:
    config = parse_args(argv, prog)
  except SystemExit as e:  # --help, or a flag error already printed on one line
    return int(e.code or 0)
  try:
    train(config, prog=prog)
  except ValueError as e:
    if os.environ.get("TRAIN_TRACEBACK"):
      raise
    return _fail(prog, e, ExitCode.BAD_INPUT)
  except NonFiniteLossError as e:
    return _fail(prog, e, ExitCode.DIVERGED)
  except SaveError as e:
    return _fail(prog, e, ExitCode.SAVE_FAILED)
  except OutputError as e:
    return _fail(prog, e, ExitCode.OUTPUT_FAILED)
  except InUseError as e:
    return _fail(prog, e, ExitCode.IN_USE)
  except Stopped as e:
    print(f"{prog}: {e}", file=sys.stderr)
    return ExitCode(e.code)
  except KeyboardInterrupt:
    print(
      f"{prog}: interrupted; saved checkpoints are kept (continue with --resume)",
      file=sys.stderr,
    )
    return ExitCode.INTERRUPTED
  return ExitCode.OK


def _fail(prog: str, error: Exception, code: ExitCode) -> int:
  print(f"{prog}: error: {error}", file=sys.stderr)
  return code


def main_exit(argv=None, prog: str | None = None) -> None:
  """`main` as a process: exits with its code. After a failed save, orbax's
  writer threads may still wait for signals that will never come; they must
  not hold the process (and its allocation), so it leaves with `os._exit`."""
  prog = prog or prog_name("pretrain.cli")
  code = main(argv, prog)
  if code == ExitCode.SAVE_FAILED:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(int(code))
