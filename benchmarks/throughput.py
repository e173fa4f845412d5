r"""End-to-end train-step time, tokens/s and MFU per optimizer, side by side.

    python benchmarks/throughput.py                     # tiny, CPU
    python benchmarks/throughput.py --model 350m --batch-size 64 --seq-len 256 \
        --dtype bfloat16 --remat block --scan-layers     # one GPU

Every optimizer runs train.py's own jitted train step
(``pretrain.step.jitted_train_step`` of a ``TrainConfig``: the same model, loss,
clipping, accumulation, remat and layout flags) on the same random token
batch, in one process. After compiling and ``--warmup`` untimed steps, the
optimizers take turns: each timed window is ``--steps`` back-to-back steps of
one optimizer and one ``jax.block_until_ready`` (the host dispatches ahead, as
in train.py's loop), and the windows of the optimizers interleave, so a
machine whose load drifts slows all of them alike. Reported per optimizer:
the median window's time per step, tokens/s (global and per device), and MFU
(``pretrain/flops.py``; n/a on a device without a known peak, e.g. a CPU).

Outputs in ``--out`` (default ``benchmarks/results/throughput_<platform>``):
``throughput.json`` and ``throughput.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (
  str(REPO) not in sys.path
):  # `python benchmarks/throughput.py` from a checkout
  sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import pretrain.config  # noqa: E402
import pretrain.optim  # noqa: E402
import pretrain.runtime  # noqa: E402
import pretrain.state  # noqa: E402
import pretrain.step  # noqa: E402
from benchmarks.step_cost import csv_list  # noqa: E402
from models.llama import create_sharded_model  # noqa: E402
from pretrain import mesh as meshlib  # noqa: E402
from pretrain.config import TrainConfig  # noqa: E402
from pretrain.flops import flops_per_token, mfu, peak_flops  # noqa: E402

OPTIMIZERS = ("adamw", "sinkgd", "swan", "muon")


def prepare(config: TrainConfig, tokens: np.ndarray) -> dict:
  """The compiled step of `config`, its state at step 0 and the batch on
  the mesh."""
  model_config = pretrain.runtime.model_config(config)
  mesh = pretrain.runtime.build_mesh(config, model_config)
  tx, _ = pretrain.optim.make_optimizer(config)
  step, _ = pretrain.step.jitted_train_step(config, model_config, mesh, tx)
  model = create_sharded_model(model_config, mesh, seed=config.seed)
  state, _ = pretrain.state.init_state(model, tx, mesh, config.seed)
  del model
  batch = [
    jax.device_put(x, meshlib.batch_sharding(mesh))
    for x in (tokens[:, :-1], tokens[:, 1:])
  ]
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, *batch).compile()
  return {
    "config": config,
    "model_config": model_config,
    "mesh": mesh,
    "step": compiled,
    "state": state,
    "batch": batch,
    "compile_s": time.perf_counter() - t0,
    "windows": [],
  }


def run_steps(run: dict, n: int) -> float:
  """Seconds for `n` back-to-back steps and one sync."""
  t0 = time.perf_counter()
  with jax.set_mesh(run["mesh"]):
    for _ in range(n):
      run["state"], out = run["step"](run["state"], *run["batch"])
    jax.block_until_ready((run["state"], out))
  return time.perf_counter() - t0


def summarize(run: dict, steps: int) -> dict:
  config, mesh = run["config"], run["mesh"]
  step_s = statistics.median(run["windows"]) / steps
  tokens = config.batch_size * config.seq_len
  tokens_per_s = tokens / step_s
  fpt = flops_per_token(run["model_config"], config.seq_len)
  peak = peak_flops(mesh.devices.flat[0])
  return {
    "optimizer": config.optimizer,
    "step_ms": 1e3 * step_s,
    "window_ms": [1e3 * w / steps for w in run["windows"]],
    "tokens_per_s": tokens_per_s,
    "tokens_per_s_per_device": tokens_per_s / mesh.devices.size,
    "mfu": mfu(tokens_per_s, fpt, mesh.devices.size, peak),
    "flops_per_token": fpt,
    "compile_s": run["compile_s"],
  }


def markdown(result: dict) -> str:
  m, c = result["metadata"], result["config"]
  lines = [
    f"Train-step throughput on {m['devices']} x {m['device_kind']} "
    f"({m['platform']}), jax {m['jax']}, {m['date'][:10]}: model "
    f"{c['model']}, batch {c['batch_size']} x {c['seq_len']} tokens"
    f" (grad accum {c['grad_accum']}), {m['dtype']} compute, remat "
    f"{c['remat']}, layers {'scanned' if c['scan_layers'] else 'unrolled'}, "
    f"mesh {m['mesh']}. Median of {c['windows']} interleaved windows of "
    f"{c['steps']} steps after {c['warmup']} warm-up steps.",
    f"Command: `{m['command']}`",
    "",
    "| optimizer | step ms | ratio to adamw | tokens/s | tokens/s/device "
    "| MFU |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  base = next(
    (r["step_ms"] for r in result["rows"] if r["optimizer"] == "adamw"), None
  )
  for r in result["rows"]:
    ratio = f"{r['step_ms'] / base:.2f}" if base else ""
    mfu_text = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    lines.append(
      f"| {r['optimizer']} | {r['step_ms']:.1f} | {ratio} | "
      f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_device']:,.0f} | "
      f"{mfu_text} |"
    )
  return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--model", default="tiny")
  p.add_argument("--optimizers", type=csv_list, default=list(OPTIMIZERS))
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--grad-accum", type=int, default=1)
  p.add_argument("--remat", default="none", choices=("none", "block", "full"))
  p.add_argument("--scan-layers", action="store_true")
  p.add_argument("--attention", default="auto")
  p.add_argument(
    "--dtype", default="auto", choices=("auto", "float32", "bfloat16")
  )
  p.add_argument("--mesh", default=None, help="as train.py's --mesh")
  p.add_argument(
    "--devices", type=int, default=None, help="use only the first N devices"
  )
  p.add_argument("--cpu-devices", type=int, default=None)
  p.add_argument(
    "--warmup", type=int, default=2, help="untimed steps (%(default)s)"
  )
  p.add_argument(
    "--windows", type=int, default=5, help="timed windows (%(default)s)"
  )
  p.add_argument(
    "--steps", type=int, default=5, help="steps per window (%(default)s)"
  )
  p.add_argument("--out", type=Path, default=None)
  args = p.parse_args(argv)
  unknown = [o for o in args.optimizers if o not in pretrain.config.OPTIMIZERS]
  if unknown:
    p.error(f"unknown optimizer(s): {', '.join(unknown)}")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  pretrain.runtime.setup_runtime(TrainConfig(cpu_devices=args.cpu_devices))
  platform = jax.default_backend()
  argv_list = sys.argv[1:] if argv is None else list(argv)
  out = args.out or REPO / "benchmarks" / "results" / f"throughput_{platform}"
  tokens = np.random.default_rng(0).integers(
    0, 256, (args.batch_size, args.seq_len + 1), dtype=np.int32
  )
  runs = []
  for name in args.optimizers:
    config = TrainConfig(
      model=args.model,
      optimizer=name,
      batch_size=args.batch_size,
      seq_len=args.seq_len,
      grad_accum=args.grad_accum,
      remat=args.remat,
      scan_layers=args.scan_layers,
      attention=args.attention,
      dtype=args.dtype,
      mesh=args.mesh,
      devices=args.devices,
    )
    run = prepare(config, tokens)
    run_steps(run, args.warmup)
    runs.append(run)
    print(f"{name}: compiled in {run['compile_s']:.1f}s", flush=True)
  for _ in range(args.windows):
    for run in runs:
      run["windows"].append(run_steps(run, args.steps))
  rows = [summarize(run, args.steps) for run in runs]
  mesh = runs[0]["mesh"]
  result = {
    "metadata": {
      "platform": platform,
      "device_kind": mesh.devices.flat[0].device_kind,
      "devices": mesh.devices.size,
      "mesh": meshlib.format_mesh(dict(mesh.shape)),
      "dtype": runs[0]["model_config"].dtype.__name__,
      "jax": jax.__version__,
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": " ".join(["python benchmarks/throughput.py", *argv_list]),
    },
    "config": {
      k: getattr(args, k)
      for k in (
        "model",
        "batch_size",
        "seq_len",
        "grad_accum",
        "remat",
        "scan_layers",
        "warmup",
        "windows",
        "steps",
      )
    },
    "rows": rows,
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / "throughput.json").write_text(json.dumps(result, indent=1))
  table = markdown(result)
  (out / "throughput.md").write_text(table)
  print()
  print(table)
  print(f"Wrote {out / 'throughput.json'} and {out / 'throughput.md'}")
  return result


if __name__ == "__main__":
  main()
