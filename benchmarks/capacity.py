r"""Device memory of train.py's step per model and optimizer, from the compiler.

    python -m benchmarks.capacity --cpu-devices 8          # a simulated 8-way mesh
    python -m benchmarks.capacity --models 350m,1b --optimizers adamw,sinkgd

For each model config and optimizer, train.py's own jitted train step
(``pretrain.step.jitted_train_step`` of a ``TrainConfig``) is lowered on abstract
inputs (``jax.ShapeDtypeStruct`` with the run's shardings: nothing is
allocated) and compiled ahead of time; ``compiled.memory_analysis()`` gives the
per-device sizes of its arguments, outputs, aliased (donated) buffers and
temporaries, and

    peak_bytes = arguments + outputs - aliased + temporaries

per device. ``param_bytes`` and ``opt_state_bytes`` are the per-device shard
sizes of the parameters and the optimizer state (from their shardings).

The step is compiled at two per-device batch sizes, b and 2b; peak memory is
affine in the batch (activations grow with it, parameters and state do not),
so ``activation_bytes_per_seq`` is the difference over b sequences, and the
largest per-device (micro)batch that fits ``--memory-gib`` is

    floor((budget - (peak_b - b * activation_bytes_per_seq))
          / activation_bytes_per_seq),

an extrapolation from the two compiles. A larger global batch is reached with
``--grad-accum``. The compiler here is the one of the machine it runs on: on a
CPU, XLA's CPU buffer assignment and fusion decide, which differ from a GPU's
or TPU's; the parameter and optimizer-state bytes do not depend on that.

Outputs in ``--out`` (default ``benchmarks/results/capacity_<platform>``):
``capacity.json`` (a list of rows: model, optimizer, devices, param_bytes,
opt_state_bytes, peak_bytes, ...) and ``capacity.md`` (the tables).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pretrain.config
import pretrain.optim
import pretrain.runtime
import pretrain.step
from benchmarks import common
from models.llama import CONFIGS, count_params
from pretrain import mesh as meshlib
from pretrain.config import TrainConfig

MODELS = ("tiny", "60m", "130m", "350m", "1b", "7b")
OPTIMIZERS = ("adamw", "sinkgd", "swan", "muon")
GIB = 2**30


def shard_bytes(tree) -> int:
  """Bytes of one device's shards of a tree of sharded ``ShapeDtypeStruct``s."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def compiled_memory(config: TrainConfig) -> dict:
  """Per-device memory of train.py's step for ``config``, compiled ahead of
  time on abstract inputs."""
  model_config = pretrain.runtime.model_config(config)
  mesh = pretrain.runtime.build_mesh(config, model_config)
  tx, _ = pretrain.optim.make_optimizer(config)
  step, state = pretrain.step.jitted_train_step(config, model_config, mesh, tx)
  batch = jax.ShapeDtypeStruct(
    (config.batch_size, config.seq_len),
    jnp.int32,
    sharding=meshlib.batch_sharding(mesh),
  )
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch, batch).compile()
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  return {
    "param_bytes": shard_bytes(state["params"]),
    "opt_state_bytes": shard_bytes(state["opt_state"]),
    "argument_bytes": m.argument_size_in_bytes,
    "output_bytes": m.output_size_in_bytes,
    "alias_bytes": m.alias_size_in_bytes,
    "temp_bytes": m.temp_size_in_bytes,
    "peak_bytes": m.argument_size_in_bytes
    + m.output_size_in_bytes
    - m.alias_size_in_bytes
    + m.temp_size_in_bytes,
    "compile_s": compile_s,
    "devices": mesh.devices.size,
    "mesh": dict(mesh.shape),
  }


def measure(args, model: str, optimizer: str) -> dict:
  """One row: memory at per-device batch b and 2b, and what fits the budget."""
  shape = meshlib.parse_mesh(args.mesh, args.devices or len(jax.devices()))
  ways = shape["data"] * shape["fsdp"]  # the batch splits over these
  rows = []
  for per_device in (args.batch_per_device, 2 * args.batch_per_device):
    config = TrainConfig(
      model=model,
      optimizer=optimizer,
      batch_size=per_device * ways,
      seq_len=args.seq_len,
      dtype=args.dtype,
      remat=args.remat,
      scan_layers=args.scan_layers,
      mesh=args.mesh,
      devices=args.devices,
    )
    rows.append(compiled_memory(config))
  small, large = rows
  b = args.batch_per_device
  per_seq = max((large["peak_bytes"] - small["peak_bytes"]) / b, 1.0)
  fixed = small["peak_bytes"] - b * per_seq
  budget = args.memory_gib * GIB
  fits = int((budget - fixed) // per_seq) if budget > fixed else 0
  return {
    "model": model,
    "optimizer": optimizer,
    "params": count_params(
      pretrain.runtime.model_config(TrainConfig(model=model))
    ),
    "devices": small["devices"],
    "mesh": meshlib.format_mesh(small["mesh"]),
    "seq_len": args.seq_len,
    "dtype": args.dtype,
    "remat": args.remat,
    "scan_layers": args.scan_layers,
    "batch_per_device": b,
    "param_bytes": small["param_bytes"],
    "opt_state_bytes": small["opt_state_bytes"],
    "peak_bytes": small["peak_bytes"],
    "peak_bytes_2x_batch": large["peak_bytes"],
    "activation_bytes_per_seq": per_seq,
    "fixed_bytes": fixed,
    "memory_gib": args.memory_gib,
    "max_batch_per_device": fits,
    "memory_analysis": {"batch": small, "batch_2x": large},
  }


def _gib(n: float) -> str:
  return f"{n / GIB:.2f}"


def markdown(rows: list[dict], meta: dict) -> str:
  r0 = rows[0]
  lines = [
    f"Per-device memory of train.py's step, from XLA's memory_analysis() of "
    f"the step compiled ahead of time on {meta['platform']} "
    f"({r0['devices']} device(s), mesh {r0['mesh']}), seq_len "
    f"{r0['seq_len']}, {r0['dtype']} compute, float32 params, remat "
    f"{r0['remat']}, layers {'scanned' if r0['scan_layers'] else 'unrolled'}"
    f"; jax {meta['jax']}, {meta['date'][:10]}.",
    f"Command: `{meta['command']}`",
    "",
    f"| model | optimizer | params GiB | opt state GiB | peak GiB at "
    f"{r0['batch_per_device']} seq/device | activations MiB/seq | "
    f"max seq/device in {r0['memory_gib']:g} GiB |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['model']} | {r['optimizer']} | {_gib(r['param_bytes'])} | "
      f"{_gib(r['opt_state_bytes'])} | {_gib(r['peak_bytes'])} | "
      f"{r['activation_bytes_per_seq'] / 2**20:.1f} | "
      f"{r['max_batch_per_device']} |"
    )
  lines += [
    "",
    f"Largest config each optimizer fits in {r0['memory_gib']:g} GiB per "
    f"device (at least one sequence of {r0['seq_len']} tokens per device; "
    "larger global batches by --grad-accum):",
    "",
    "| optimizer | largest model | its max seq/device | opt state GiB |",
    "|---|---|---:|---:|",
  ]
  for name, best in largest_fits(rows).items():
    if best is None:
      lines.append(f"| {name} | none of these | | |")
    else:
      lines.append(
        f"| {name} | {best['model']} | {best['max_batch_per_device']} | "
        f"{_gib(best['opt_state_bytes'])} |"
      )
  return "\n".join(lines) + "\n"


def largest_fits(rows: list[dict]) -> dict:
  """{optimizer: the row of the largest model that fits >= 1 sequence}."""
  best: dict = {}
  for r in rows:
    best.setdefault(r["optimizer"], None)
    if r["max_batch_per_device"] >= 1 and (
      best[r["optimizer"]] is None
      or r["params"] > best[r["optimizer"]]["params"]
    ):
      best[r["optimizer"]] = r
  return best


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--models", type=common.csv_list, default=list(MODELS))
  p.add_argument("--optimizers", type=common.csv_list, default=list(OPTIMIZERS))
  p.add_argument("--seq-len", type=int, default=256, help="(%(default)s)")
  p.add_argument(
    "--batch-per-device",
    type=int,
    default=4,
    help="b: compiled at b and 2b sequences per device (%(default)s)",
  )
  p.add_argument(
    "--dtype",
    default="bfloat16",
    choices=("float32", "bfloat16"),
    help="compute dtype, as on a GPU/TPU (%(default)s)",
  )
  p.add_argument("--remat", default="none", choices=("none", "block", "full"))
  p.add_argument(
    "--scan-layers",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="compile the scanned layout (fast to compile; default on)",
  )
  p.add_argument("--mesh", default=None, help="as train.py's --mesh")
  p.add_argument(
    "--devices", type=int, default=None, help="use only the first N devices"
  )
  p.add_argument(
    "--cpu-devices", type=int, default=None, help="simulate N CPU devices"
  )
  p.add_argument(
    "--memory-gib",
    type=float,
    default=80.0,
    help="per-device budget (%(default)s)",
  )
  p.add_argument("--out", type=Path, default=None)
  args = p.parse_args(argv)
  unknown = [m for m in args.models if m not in CONFIGS]
  unknown += [o for o in args.optimizers if o not in pretrain.config.OPTIMIZERS]
  if unknown:
    p.error(f"unknown model(s)/optimizer(s): {', '.join(unknown)}")
  if args.batch_per_device < 1:
    p.error("--batch-per-device must be at least 1")
  return args


def main(argv=None) -> list[dict]:
  """Runs the analysis; writes its records, capacity.json and capacity.md;
  returns the rows."""
  args = parse_args(argv)
  pretrain.runtime.setup_runtime(TrainConfig(cpu_devices=args.cpu_devices))
  platform = jax.default_backend()
  out = args.out or common.default_out("capacity", platform)
  argv_list = common.argv_of(argv)
  device = jax.devices()[0]
  meta = {
    "platform": platform,
    "device_kind": device.device_kind,
    "jax": jax.__version__,
    "date": common.now(),
    "command": common.command_line("capacity", argv_list),
    # What the allocator says it may use (None where the device does not
    # count): the budget a real run has, unlike --memory-gib's.
    "memory_stats": device.memory_stats(),
  }
  with common.RecordWriter(out / common.RECORDS) as records:
    for model in args.models:
      for optimizer in args.optimizers:
        row = measure(args, model, optimizer)
        records.write({**row, "metadata": meta})
        print(
          f"{model:5s} {optimizer:7s} params {_gib(row['param_bytes'])} GiB, "
          f"opt state {_gib(row['opt_state_bytes'])} GiB, peak "
          f"{_gib(row['peak_bytes'])} GiB at {row['batch_per_device']} "
          f"seq/device, max {row['max_batch_per_device']} seq/device "
          f"(compiles {row['memory_analysis']['batch']['compile_s']:.0f}s, "
          f"{row['memory_analysis']['batch_2x']['compile_s']:.0f}s)",
          flush=True,
        )
  rows = common.read_records(out / common.RECORDS)
  common.write_outputs(out, "capacity", rows, markdown(rows, meta))
  return rows


if __name__ == "__main__":
  common.run_as_script(main)
