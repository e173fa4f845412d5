"""What the commands (`mno-train`, `mno-prepare`, `mno-sample`) share: the
name they were run by, and flag errors on one line."""

from __future__ import annotations

import argparse
import os
import sys

from pretrain.errors import ExitCode


class OneLineParser(argparse.ArgumentParser):
  """An argparse parser whose flag errors are one line, `PROG: error: ...`,
  and `ExitCode.BAD_FLAG` (2, argparse's own), without the usage block."""

  def error(self, message):
    self.exit(ExitCode.BAD_FLAG, f"{self.prog}: error: {message}\n")


def prog_name(module: str) -> str:
  """The command as the user typed it, to start its usage and error lines.

  `python -m MODULE` when `MODULE` runs as `__main__`; otherwise the file
  named by `sys.argv[0]`: the console script (`mno-sample`) or the script
  (`train.py`). `python -m MODULE` again where there is none (an embedded
  interpreter).
  """
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name == module:
    return f"python -m {module}"
  return os.path.basename(sys.argv[0]) or f"python -m {module}"
