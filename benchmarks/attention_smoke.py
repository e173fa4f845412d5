r"""Does each attention implementation compile and run in train.py's step?

    python -m benchmarks.attention_smoke --model 60m --impls cudnn,xla  # GPU
    python -m benchmarks.attention_smoke --model tiny --impls xla,einsum

For each implementation (``TrainConfig.attention``), train.py's jitted train
step (``pretrain.step.jitted_train_step``) is compiled for one batch of random
tokens and run for ``--steps`` steps. Recorded per implementation, as each
finishes: whether it compiled and ran (else the error's text), the
implementation "auto" resolves to on this device, whether the compiled HLO
holds a cuDNN fused-attention call (what ran, not what was asked for), the
compile seconds and the losses (finite or not). A GPU's first cuDNN flash
attention compile is the suite's first part: the one thing no CPU run can
show.

Outputs in ``--out`` (default ``benchmarks/results/attention_smoke_<platform>``):
``records.jsonl``, ``attention_smoke.json`` and ``attention_smoke.md``.
"""

from __future__ import annotations

import argparse
import math
import time
import traceback
from pathlib import Path

import jax
import numpy as np

import pretrain.runtime
from benchmarks import common
from benchmarks.throughput import prepare
from models.llama import ATTENTION_IMPLS, attention_impl
from pretrain.config import TrainConfig

# What a cuDNN fused attention call is named in the compiled HLO.
CUDNN_MARK = "__cudnn$fmha"


def smoke(config: TrainConfig, steps: int) -> dict:
  """Compiles and runs `config`'s step; what ran and how it went."""
  model_config = pretrain.runtime.model_config(config)
  resolved = attention_impl(
    config.attention, model_config.dtype, model_config.head_dim
  )
  row = {
    "attention": config.attention,
    "resolves_to": resolved,
    "dtype": model_config.dtype.__name__,
  }
  tokens = (
    np.random.default_rng(0)
    .integers(
      0, model_config.vocab_size, (config.batch_size, config.seq_len + 1)
    )
    .astype(np.int32)
  )
  try:
    run = prepare(config, tokens)
    row["compile_s"] = run["compile_s"]
    row["cudnn_in_hlo"] = CUDNN_MARK in run["step"].as_text()
    t0 = time.perf_counter()
    losses = []
    with jax.set_mesh(run["mesh"]):
      for _ in range(steps):
        run["state"], out = run["step"](run["state"], *run["batch"])
        losses.append(float(out["loss"]))
    row["run_s"] = time.perf_counter() - t0
    row["losses"] = losses
    row["ok"] = all(math.isfinite(x) for x in losses)
  except Exception as e:  # the record is the point: say what failed
    row["ok"] = False
    row["error"] = f"{type(e).__name__}: {e}"[:2000]
    row["traceback"] = traceback.format_exc()[-4000:]
  return row


def markdown(result: dict) -> str:
  m = result.get("metadata", {})
  lines = [
    f"Attention smoke test on {m.get('device_kind', '?')} "
    f"({m.get('platform', '?')}), jax {m.get('jax', '?')}: model "
    f"{m.get('model', '?')}, {m.get('batch_size')} x {m.get('seq_len')} "
    "tokens, train.py's step compiled and run.",
    f"Command: `{m.get('command', '?')}`",
    "",
    "| attention | runs as | dtype | ok | cuDNN call in HLO | compile s "
    "| last loss | error |",
    "|---|---|---|---|---|---:|---:|---|",
  ]
  for r in result["rows"]:
    loss = r.get("losses") or [math.nan]
    error = r.get("error", "").splitlines()[0][:120] if "error" in r else ""
    lines.append(
      f"| {r['attention']} | {r['resolves_to']} | {r['dtype']} | "
      f"{'yes' if r['ok'] else 'NO'} | {r.get('cudnn_in_hlo', '—')} | "
      f"{r.get('compile_s', math.nan):.1f} | {loss[-1]:.4f} | {error} |"
    )
  return "\n".join(lines) + "\n"


def from_records(records: list[dict]) -> dict:
  result = {"rows": []}
  for r in records:
    if r.pop("kind") == "metadata":
      result["metadata"] = r
    else:
      result["rows"].append(r)
  return result


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--model", default="tiny")
  p.add_argument(
    "--impls",
    type=common.csv_list,
    default=["auto", "xla"],
    help=f"from {', '.join(ATTENTION_IMPLS)} (%(default)s)",
  )
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument(
    "--dtype", default="auto", choices=("auto", "float32", "bfloat16")
  )
  p.add_argument("--scan-layers", action="store_true")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", type=Path, default=None)
  args = p.parse_args(argv)
  bad = [i for i in args.impls if i not in ATTENTION_IMPLS]
  if bad:
    p.error(
      f"unknown attention {bad}; choose from {', '.join(ATTENTION_IMPLS)}"
    )
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  argv_list = common.argv_of(argv)
  info = common.device_info()
  out = args.out or common.default_out("attention_smoke", info["platform"])
  with common.RecordWriter(out / common.RECORDS) as records:
    records.write(
      {
        "kind": "metadata",
        **info,
        "date": common.now(),
        "command": common.command_line("attention_smoke", argv_list),
        "model": args.model,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
      }
    )
    for impl in args.impls:
      config = TrainConfig(
        model=args.model,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        attention=impl,
        dtype=args.dtype,
        scan_layers=args.scan_layers,
      )
      row = smoke(config, args.steps)
      records.write({"kind": "row", **row})
      print(
        f"{impl} (runs as {row['resolves_to']}): "
        f"{'ok' if row['ok'] else 'FAILED ' + row.get('error', '')}",
        flush=True,
      )
  result = from_records(common.read_records(out / common.RECORDS))
  common.write_outputs(out, "attention_smoke", result, markdown(result))
  return result


if __name__ == "__main__":
  common.run_as_script(main)
