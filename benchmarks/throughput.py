r"""End-to-end train-step time, tokens/s and MFU per optimizer, side by side.

    python -m benchmarks.throughput                     # tiny, CPU
    python -m benchmarks.throughput --model 350m --batch-size 64 --seq-len 256 \
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
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import pretrain.config
import pretrain.optim
import pretrain.runtime
import pretrain.state
import pretrain.step
from benchmarks import common, variants
from models.llama import attention_impl, create_sharded_model
from pretrain import mesh as meshlib
from pretrain.config import TrainConfig
from pretrain.flops import flops_per_token, mfu, peak_flops

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


def summarize(compiled: dict, windows: list[float], steps: int) -> dict:
  """A row of the table: the `compiled` record of one optimizer and its
  timed windows so far."""
  step_s = statistics.median(windows) / steps
  tokens_per_s = compiled["tokens_per_step"] / step_s
  devices = compiled["devices"]
  return {
    "optimizer": compiled["optimizer"],
    "step_ms": 1e3 * step_s,
    "window_ms": [1e3 * w / steps for w in windows],
    "tokens_per_s": tokens_per_s,
    "tokens_per_s_per_device": tokens_per_s / devices,
    "mfu": mfu(
      tokens_per_s, compiled["flops_per_token"], devices, compiled["peak"]
    ),
    "flops_per_token": compiled["flops_per_token"],
    "compile_s": compiled["compile_s"],
  }


def from_records(records: list[dict]) -> dict:
  """The result of the records written so far: every optimizer with a timed
  window, each from the windows it finished."""
  result, compiled, windows = {}, {}, {}
  for r in records:
    kind = r.pop("kind")
    if kind == "metadata":
      result.update(r)
    elif kind == "compiled":
      compiled[r["optimizer"]] = r
    elif kind == "window":
      windows.setdefault(r["optimizer"], []).append(r["seconds"])
  steps = result.get("config", {}).get("steps", 1)
  result["rows"] = [
    summarize(c, windows[name], steps)
    for name, c in compiled.items()
    if windows.get(name)
  ]
  result["compiled_only"] = [n for n in compiled if not windows.get(n)]
  return result


def markdown(result: dict) -> str:
  m, c = result["metadata"], result["config"]
  lines = [
    f"Train-step throughput on {m['devices']} x {m['device_kind']} "
    f"({m['platform']}), jax {m['jax']}, {m['date'][:10]}: model "
    f"{c['model']}, batch {c['batch_size']} x {c['seq_len']} tokens"
    f" (grad accum {c['grad_accum']}), {m['dtype']} compute, remat "
    f"{c['remat']}, layers {'scanned' if c['scan_layers'] else 'unrolled'}, "
    f"mesh {m['mesh']}, attention {m.get('attention', 'n/a')}. Median of {c['windows']} interleaved windows of "
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
  p.add_argument("--optimizers", type=common.csv_list, default=list(OPTIMIZERS))
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
  unknown = variants.unknown(args.optimizers)
  if unknown:
    p.error(f"unknown optimizer(s): {', '.join(unknown)}")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  pretrain.runtime.setup_runtime(TrainConfig(cpu_devices=args.cpu_devices))
  platform = jax.default_backend()
  argv_list = common.argv_of(argv)
  out = args.out or common.default_out("throughput", platform)
  tokens = np.random.default_rng(0).integers(
    0, 256, (args.batch_size, args.seq_len + 1), dtype=np.int32
  )
  with common.RecordWriter(out / common.RECORDS) as records:
    runs = []
    for name in args.optimizers:
      config = TrainConfig(
        **variants.VARIANTS[name].overrides,
        model=args.model,
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
      if not runs:
        records.write(_metadata(args, run, platform, argv_list))
      run_steps(run, args.warmup)
      runs.append(run)
      records.write(_compiled(name, run))
      print(f"{name}: compiled in {run['compile_s']:.1f}s", flush=True)
    for _ in range(args.windows):
      for name, run in zip(args.optimizers, runs):
        seconds = run_steps(run, args.steps)
        records.write({"kind": "window", "optimizer": name, "seconds": seconds})
  result = from_records(common.read_records(out / common.RECORDS))
  common.write_outputs(out, "throughput", result, markdown(result))
  return result


def _metadata(args, run: dict, platform: str, argv_list: list[str]) -> dict:
  mesh, model_config = run["mesh"], run["model_config"]
  head_dim = model_config.head_dim
  return {
    "kind": "metadata",
    "metadata": {
      "platform": platform,
      "device_kind": mesh.devices.flat[0].device_kind,
      "devices": mesh.devices.size,
      "mesh": meshlib.format_mesh(dict(mesh.shape)),
      "dtype": model_config.dtype.__name__,
      # What "auto" ran as (cuDNN flash attention only on a GPU in bf16).
      "attention": attention_impl(
        run["config"].attention, model_config.dtype, head_dim
      ),
      "date": common.now(),
      "command": common.command_line("throughput", argv_list),
      **common.versions(),
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
  }


def _compiled(name: str, run: dict) -> dict:
  config, mesh = run["config"], run["mesh"]
  return {
    "kind": "compiled",
    "optimizer": name,
    "compile_s": run["compile_s"],
    "tokens_per_step": config.batch_size * config.seq_len,
    "flops_per_token": flops_per_token(run["model_config"], config.seq_len),
    "peak": peak_flops(mesh.devices.flat[0]),
    "devices": mesh.devices.size,
  }


if __name__ == "__main__":
  common.run_as_script(main)
