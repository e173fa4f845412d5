r"""Compile-only timings of what the GPU suite compiles, to budget its parts.

    python -m benchmarks.compile_budget                # CPU, a few minutes
    python -m benchmarks.compile_budget --only step_cost

Each case is lowered on abstract inputs (``jax.ShapeDtypeStruct``: nothing
is allocated, so the 1b tree compiles on any machine) and compiled ahead of
time, ``jax.jit(f).lower(...).compile()``, timed with a host clock:

- ``step_cost``: the donated optimizer step of ``benchmarks.step_cost`` on
  the 1b parameter tree, bfloat16 gradients, per case of the suite;
- ``throughput``: train.py's train step (``pretrain.step``) at 64 x 256
  tokens on 60m and 130m, layers scanned, per optimizer;
- ``convergence``: the same step at the suite's 60m convergence size.

The suite's budget (docs/SCALING.md) takes these CPU seconds as its estimate
of the device's compile seconds; what a GPU compile costs instead is only
known after the first real run, which records every compile time it makes.
Records go to ``--out`` (default ``benchmarks/results/compile_budget_cpu``)
as they finish, then ``compile_budget.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import common, variants
from benchmarks.capacity import compiled_memory
from benchmarks.step_cost import build_tx, optimizer_step, param_shapes

# The suite's parts, as it runs them on the device (benchmarks/gpu_suite.sh).
STEP_COST = ("adamw", "sinkgd_l5", "sinkgd_fast", "swan", "muon")
THROUGHPUT = ("adamw", "sinkgd", "swan", "muon")
THROUGHPUT_MODELS = ("60m", "130m")
CONVERGENCE = ("adamw2", "sinkgd", "swan", "muon")
PARTS = ("step_cost", "throughput", "convergence")


def step_cost_compile_s(name: str, model: str = "1b") -> float:
  """Seconds to compile case `name`'s donated step on `model`'s tree."""
  tx = build_tx(name)
  params = param_shapes(model)
  grads = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bfloat16), params
  )
  state = jax.eval_shape(tx.init, params)
  t0 = time.perf_counter()
  jax.jit(optimizer_step(tx), donate_argnums=(0, 1)).lower(
    params, state, grads
  ).compile()
  return time.perf_counter() - t0


def train_step_compile_s(name: str, model: str, batch: int, seq: int) -> float:
  """Seconds to compile train.py's step of variant `name` (layers scanned)."""
  config = variants.config(
    name, model=model, batch_size=batch, seq_len=seq, scan_layers=True
  )
  return compiled_memory(config)["compile_s"]


def cases(parts) -> list[tuple[str, str, str, tuple]]:
  """(part, model, variant, size) of every compile the suite makes."""
  out = []
  if "step_cost" in parts:
    out += [("step_cost", "1b", n, ()) for n in STEP_COST]
  if "throughput" in parts:
    out += [
      ("throughput", m, n, (64, 256))
      for m in THROUGHPUT_MODELS
      for n in THROUGHPUT
    ]
  if "convergence" in parts:
    out += [("convergence", "60m", n, (32, 256)) for n in CONVERGENCE]
  return out


def markdown(records: list[dict]) -> str:
  meta = records[0]
  lines = [
    f"Compile-only seconds on {meta['device_kind']} ({meta['cpu_count']} "
    f"cores), jax {meta['jax']}, {meta['date'][:10]}.",
    f"Command: `{meta['command']}`",
    "",
    "| part | model | variant | batch x seq | compile s |",
    "|---|---|---|---|---:|",
  ]
  totals = {}
  for r in records[1:]:
    size = " x ".join(map(str, r["size"])) or "—"
    lines.append(
      f"| {r['part']} | {r['model']} | {r['variant']} | {size} | "
      f"{r['compile_s']:.1f} |"
    )
    totals[r["part"]] = totals.get(r["part"], 0.0) + r["compile_s"]
  lines += ["", "| part | compiles, total s |", "|---|---:|"]
  lines += [f"| {p} | {s:.0f} |" for p, s in totals.items()]
  return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--only", type=common.csv_list, default=list(PARTS))
  p.add_argument("--out", type=Path, default=None)
  args = p.parse_args(argv)
  out = args.out or common.default_out("compile_budget", jax.default_backend())
  with common.RecordWriter(out / common.RECORDS) as records:
    records.write(
      {
        **common.device_info(),
        "date": common.now(),
        "command": common.command_line("compile_budget", common.argv_of(argv)),
      }
    )
    for part, model, name, size in cases(args.only):
      if part == "step_cost":
        seconds = step_cost_compile_s(name, model)
      else:
        seconds = train_step_compile_s(name, model, *size)
      records.write(
        {
          "part": part,
          "model": model,
          "variant": name,
          "size": list(size),
          "compile_s": seconds,
        }
      )
      print(f"{part} {model} {name} {size}: {seconds:.1f} s", flush=True)
  rows = common.read_records(out / common.RECORDS)
  table = markdown(rows)
  (out / "compile_budget.md").write_text(table)
  print(table)
  return rows


if __name__ == "__main__":
  common.run_as_script(main)
