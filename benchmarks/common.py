"""What every benchmark shares: command-line lists, the machine and library
versions, results written as they are measured, and plots.

A benchmark writes one JSON record per finished case with `RecordWriter`
(flushed and synced on every line), so a run killed at its time limit keeps
every case it finished; `read_records` reads them back, a torn last line
skipped. Its tables are made from those records at the end, or by
`benchmarks.gpu_suite_report` when the end never came.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import platform as platform_lib
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

import pretrain.errors

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RECORDS = "records.jsonl"


# ------------------------------------------------------------------ arguments


def csv_list(text: str) -> list[str]:
  """A comma-separated command-line value as a list, blanks dropped."""
  return [x.strip() for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
  """A comma-separated command-line value as floats, blanks dropped."""
  return [float(x) for x in csv_list(text)]


def int_list(text: str) -> list[int]:
  """A comma-separated command-line value as ints, blanks dropped."""
  return [int(x) for x in csv_list(text)]


def default_out(name: str, platform: str) -> Path:
  """`benchmarks/results/<name>_<platform>`, where stored results live."""
  return RESULTS / f"{name}_{platform}"


def command_line(module: str, argv: list[str]) -> str:
  """How to run this again: `python -m benchmarks.<module> ARGS`."""
  return shlex.join(["python", "-m", f"benchmarks.{module}", *argv])


def argv_of(argv) -> list[str]:
  """`argv` as given to a `main(argv)`, or the process's own."""
  return sys.argv[1:] if argv is None else list(argv)


# ------------------------------------------------------------------ machine


def versions() -> dict:
  """The library versions a result depends on, and Python's."""
  import flax
  import jaxlib
  import optax

  import multinorm_optax

  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
    "multinorm_optax": multinorm_optax.__version__,
    "python": platform_lib.python_version(),
  }


def device_info() -> dict:
  """The platform, device and library versions of this process."""
  device = jax.local_devices()[0]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "cpu_count": os.cpu_count(),
    **versions(),
  }


def now() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------ running


def run_as_script(main: Callable[[], Any]) -> None:
  """Runs a benchmark's `main()` as `python -m benchmarks.<name>` does: a
  SIGINT or SIGTERM (the GPU suite's `timeout --signal=INT` at a part's
  limit) ends the process at once with 128 + the signal's number, as does a
  training run that such a signal stopped (`pretrain.errors.Stopped`, from
  the in-process sweeps).

  Every record is flushed and synced as it is written, so ending at once
  loses nothing measured; unwinding instead (a KeyboardInterrupt raised in
  the middle of a JAX compile or step) was seen to crash the interpreter's
  exit (SIGSEGV) or hang it on JAX's threads, so a part cut at its limit
  would not end when cut.
  """
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda n, _: _end(128 + n, signal.Signals(n).name))
  try:
    main()
  except pretrain.errors.Stopped as e:
    _end(e.code, str(e))


def _end(code: int, why: str) -> None:
  sys.stdout.flush()
  os.write(2, f"{why}: ended; the records written so far are kept\n".encode())
  os._exit(code)


# ------------------------------------------------------------------ outputs


class RecordWriter:
  """Appends one JSON record a line to `path`, flushed and synced each time:
  what a benchmark has measured survives its process being killed."""

  def __init__(self, path: Path, *, fresh: bool = True):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "w" if fresh else "a")  # noqa: SIM115

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record, default=_jsonable) + "\n")
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> RecordWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_records(path: Path) -> list[dict]:
  """The records `RecordWriter` wrote; a last line cut mid-write is skipped."""
  path = Path(path)
  if not path.exists():
    return []
  return list(_parse_lines(path.read_text().splitlines()))


def _parse_lines(lines: list[str]) -> Iterator[dict]:
  for line in lines:
    try:
      yield json.loads(line)
    except json.JSONDecodeError:
      continue


def _jsonable(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, Path):
    return str(x)
  raise TypeError(f"not JSON: {type(x).__name__}")


def write_outputs(
  out: Path,
  name: str,
  result: dict,
  table: str,
  plot: Callable[[dict, Path], None] | None = None,
) -> None:
  """`out/<name>.json` (the whole result) and `out/<name>.md` (its tables),
  the tables printed too; `plot(result, out)` draws its figures where
  matplotlib is (`can_plot`)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.json").write_text(json.dumps(result, indent=1))
  (out / f"{name}.md").write_text(table)
  if plot is not None and can_plot():
    plot(result, out)
  print()
  print(table)
  print(f"Wrote {out / f'{name}.json'} and {out / f'{name}.md'}", flush=True)


def human_bytes(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024


def tree_bytes(tree) -> int:
  """Bytes of every leaf of `tree` (arrays or shape structs)."""
  return sum(
    math.prod(x.shape) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


# ------------------------------------------------------------------ plots


def can_plot() -> bool:
  """Whether matplotlib is there (a GPU image may lack it: the tables are
  written either way, the plots only with it)."""
  return importlib.util.find_spec("matplotlib") is not None


def panels(count: int, width: float, height: float):
  """A matplotlib figure of `count` side-by-side panels (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(1, count, figsize=(width * count, height), squeeze=False)


def save_figure(fig, path: Path) -> None:
  import matplotlib.pyplot as plt

  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def lr_axes(ax, title: str, xlabel: str) -> None:
  """A log-lr panel's axes, grid and legend."""
  ax.set_xscale("log")
  ax.set_xlabel(xlabel, fontsize=7)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
