r"""The GPU suite's summary: suite.json and suite.md from a suite's work folder.

    python3 -m benchmarks.gpu_suite_report WORK      # run by benchmarks/gpu_suite.sh

WORK holds ``status.tsv`` (one line a part: name, exit code, seconds, limit,
module, command), ``device.txt`` (what the device query said) and one folder
per part with that part's ``records.jsonl``. A part that finished gave its own
tables (``<module>.md``); for one that did not, they are made from its records
by its module (``from_records`` then ``markdown``), so a part
killed at its limit (exit 124 or 137: "cut") still shows every case it
finished; a part with no module table lists its records.

suite.json: the machine (device query, JAX's devices), library versions,
XLA flags and memory settings, the attention implementation each part
actually ran, the stdlib corpus' size under this Python, and per part its
exit code, seconds, limit, whether it was cut and how many records it kept.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from benchmarks import common

# timeout's exit when its INT ended the part, KILL's, and a part the suite
# had no time left for.
CUT_CODES = ("124", "137", "skipped")
ENV = (
  "XLA_FLAGS",
  "XLA_PYTHON_CLIENT_PREALLOCATE",
  "XLA_PYTHON_CLIENT_MEM_FRACTION",
  "XLA_PYTHON_CLIENT_ALLOCATOR",
  "JAX_PLATFORMS",
  "JAX_COMPILATION_CACHE_DIR",
  "PYTHONPATH",
)


def read_status(work: Path) -> list[dict]:
  parts = []
  path = work / "status.tsv"
  for line in path.read_text().splitlines() if path.exists() else []:
    name, rc, seconds, limit, module, command = line.split("\t", 5)
    records = common.read_records(work / name / common.RECORDS)
    parts.append(
      {
        "part": name,
        "exit": rc,
        "seconds": _int(seconds),
        "limit_s": _int(limit),
        "cut": rc in CUT_CODES,
        "ok": rc == "0",
        "records": len(records),
        "module": module,
        "command": command,
      }
    )
  return parts


def _int(text: str) -> int | None:
  return int(text) if text.isdigit() else None


def part_table(work: Path, part: dict) -> str:
  """The part's own tables from its records (or the list of its records)."""
  finished = work / part["part"] / f"{part['module']}.md"
  if finished.exists():
    return finished.read_text()
  records = common.read_records(work / part["part"] / common.RECORDS)
  if not records:
    return "No records.\n"
  module = importlib.import_module(f"benchmarks.{part['module']}")
  if hasattr(module, "from_records"):
    try:
      return module.markdown(module.from_records(records))
    except Exception as e:  # a cut part's records may not make a table
      note = f"(its table failed: {type(e).__name__}: {e})\n\n"
      records = common.read_records(work / part["part"] / common.RECORDS)
  else:
    note = ""
  return note + records_table(records)


def records_table(records: list[dict]) -> str:
  """One line a record: its scalar fields (a convergence run: variant, lr,
  adam_lr, seed, status, final loss...)."""
  keys = []
  for r in records:
    for k, v in r.items():
      if isinstance(v, str | int | float | bool | None) and k not in keys:
        keys.append(k)
  keys = keys[:10]
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in records:
    cells = [_cell(r.get(k)) for k in keys]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _cell(x) -> str:
  if isinstance(x, float):
    return f"{x:.4g}"
  return "" if x is None else str(x).replace("|", "/")[:60]


def attention_used(work: Path, parts: list[dict]) -> dict:
  """Per part, the attention implementation its records say ran."""
  out = {}
  for p in parts:
    for r in common.read_records(work / p["part"] / common.RECORDS):
      if "resolves_to" in r:
        hlo = r.get("cudnn_in_hlo")
        out.setdefault(p["part"], []).append(
          f"{r['attention']} -> {r['resolves_to']}"
          + ("" if hlo is None else f" (cuDNN call in HLO: {hlo})")
          + ("" if r.get("ok") else " FAILED")
        )
      elif "attention" in r.get("metadata", {}):
        out[p["part"]] = [r["metadata"]["attention"]]
      elif "attention" in r.get("settings", {}):
        out[p["part"]] = [r["settings"]["attention"]]
  return out


def environment() -> dict:
  import jax

  from benchmarks.common import versions
  from pretrain.data import stdlib_files

  devices = jax.devices()
  return {
    "jax_devices": [f"{d.platform}: {d.device_kind}" for d in devices],
    "memory_stats": devices[0].memory_stats(),
    "versions": versions(),
    "env": {k: os.environ.get(k) for k in ENV},
    # The stdlib corpus is this Python's own library: 1790 files under
    # Python 3.11, 1740 under 3.12, so losses are comparable only between
    # runs on the same Python.
    "stdlib_corpus_files": len(stdlib_files()),
  }


def markdown(suite: dict, tables: dict[str, str]) -> str:
  v = suite["versions"]
  env = suite["env"]
  cut = [p["part"] for p in suite["parts"] if p["cut"]]
  failed = [p["part"] for p in suite["parts"] if not (p["ok"] or p["cut"])]
  lines = [
    f"# GPU suite{' (DRY RUN on CPU)' if suite['dry_run'] else ''}",
    "",
    f"Device: {suite['device']}; JAX sees {', '.join(suite['jax_devices'])}.",
    f"jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax "
    f"{v['optax']}, numpy {v['numpy']}, Python {v['python']}.",
    f"XLA_FLAGS={env['XLA_FLAGS'] or '(unset)'}; memory: preallocate "
    f"{env['XLA_PYTHON_CLIENT_PREALLOCATE'] or '(default: true)'}, fraction "
    f"{env['XLA_PYTHON_CLIENT_MEM_FRACTION'] or '(default: 0.75)'}.",
    f"Stdlib corpus: {suite['stdlib_corpus_files']} files under Python "
    f"{v['python']} (1790 under 3.11): losses compare only on one Python.",
    "Attention that ran: "
    + (
      "; ".join(f"{k}: {', '.join(x)}" for k, x in suite["attention"].items())
      or "not recorded"
    )
    + ".",
    f"Total {suite['total_seconds']} s. Cut at their limit: "
    f"{', '.join(cut) or 'none'}; failed: {', '.join(failed) or 'none'}.",
    "",
    "| part | exit | seconds | limit s | cut | records |",
    "|---|---|---:|---:|---|---:|",
  ]
  for p in suite["parts"]:
    lines.append(
      f"| {p['part']} | {p['exit']} | {p['seconds']} | {p['limit_s']} | "
      f"{'CUT' if p['cut'] else ''} | {p['records']} |"
    )
  for name, table in tables.items():
    lines += ["", f"## {name}", "", table]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  work = Path(argv[0])
  parts = read_status(work)
  device = work / "device.txt"
  suite = {
    "dry_run": (work / "DRY_RUN").exists(),
    "device": device.read_text().strip() if device.exists() else "unknown",
    **environment(),
    "attention": attention_used(work, parts),
    "total_seconds": sum(p["seconds"] or 0 for p in parts),
    "parts": parts,
  }
  tables = {p["part"]: part_table(work, p) for p in parts}
  (work / "suite.json").write_text(json.dumps(suite, indent=1))
  text = markdown(suite, tables)
  (work / "suite.md").write_text(text)
  print(text.split("\n## ")[0])
  return suite


if __name__ == "__main__":
  main()
