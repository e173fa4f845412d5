r"""Cost of one optimizer step, and optimizer-state bytes, on LLaMA-shaped parameter trees.

    python -m benchmarks.step_cost                  # CPU: tiny,60m; GPU/TPU: 60m..1b
    python -m benchmarks.step_cost --models 1b --grad-dtypes bfloat16 \
        --optimizers adamw,sinkgd_l5

What is timed: one update, ``tx.update`` then ``optax.apply_updates``, jitted
together with the parameters and the optimizer state donated, so it runs in
place the way a training step does. Parameters are random float32, gradients
random float32 or bfloat16 (never zeros). The step is compiled ahead of time
(compile time is recorded, not timed), then ``--warmup`` untimed samples and
``--repeats`` timed ones; a sample is ``--calls`` back-to-back steps and one
``jax.block_until_ready``, timed with a host clock and divided by ``--calls``
(so the host dispatches the next step while the device runs this one, as in a
training loop); the median sample is reported. Optimizers (``--optimizers``):
sgd, adamw, adafactor, muon (``optax.contrib.muon``, hidden matrices only as in
our recipe, the rest its AdamW), swan (its default whitening) and swan_fast,
swan_exact, swan_newton_schulz (each ``whiten`` mode; swan_fast3 the 3-step
fast schedule), sinkgd_l1 and sinkgd_l5 (the default
fused SR-Sinkhorn), sinkgd_l5_reference (``impl="reference"``, each
normalization materialized), sinkgd_l5_spectral (``update_scale="spectral"``),
sinkgd_stateless (``sinkgd_stateless``: no AdamW state at all), sinkgd_warm_l1
(``--warm-start``, one round), sinkgd_guard (``--overflow-guard on_demand``,
five rounds) and sinkgd_fast (both, one round). Each is ``pretrain.optim.make_optimizer`` of a
``TrainConfig`` (``CASES`` names the variants, ``benchmarks.variants`` holds the
fields that differ): the very optimizer ``train.py`` runs, at its default peak
learning rate and schedule.

Baseline, in the same run and on the same parameter tree: a device copy of
every parameter (``jnp.copy`` per leaf, jitted, into a donated buffer of the
same shapes, so XLA reads every byte once and writes it once and nothing is
allocated, as in the donated step). One **pass** is one read *or* one write
of all parameter bytes (float32), so the time of a pass is half the copy's
time, and an optimizer's ``passes = step time / (copy time / 2)``. A
bandwidth-bound AdamW step reads p, g, mu, nu and writes p, mu, nu: at least 7
passes with float32 gradients. The time of a reduction over all parameters
(one read, nothing written) is recorded too, as a cross-check of the pass time.
Absolute times depend on the machine; ratios measured side by side (to AdamW,
to the copy) are what to compare. On a CPU the steps are not purely
bandwidth-bound, so passes there can fall below the byte count's floor.

State bytes: the sum of ``nbytes`` over the leaves of ``tx.init(params)``, and
the part of it attributed to hidden matrices (leaves whose tree path ends with
the path of a parameter that ``multinorm_optax.default_param_labels`` labels
``'multinorm'``, with that parameter's shape or that shape with axes reduced to
1, like SinkGD's warm-start column scaling).

Static pass count (``--count-passes``, on by default): for one hidden matrix of
the largest model's MLP shape, the same step is compiled alone and its
optimized HLO is read. In every computation that runs as its own kernels (the
entry computation and what it calls through ``while``/``call``/``conditional``;
not the bodies of fusions, which run inside one kernel), each instruction that
takes a full-size operand (as many elements as the matrix) counts one read
per such operand, and each full-size result counts one write. Bookkeeping
instructions that move no data (parameter, constant, tuple, get-tuple-element,
bitcast) are skipped. ``passes`` there is the bytes of those reads and writes
over the bytes of one float32 matrix. A loop body is counted once however often
it runs (the table says when a loop was found). A ``conditional`` adds its
cheapest branch, the path of a guard that redoes the work only on overflow
(``--overflow-guard on_demand``); the count with its dearest branch is given
beside it. Smaller arrays (row/column
vectors, the Gram matrices of muon and swan) and arithmetic are not counted,
so matmul-heavy optimizers cost more than their count says. This is XLA's plan
for the platform it runs on, not a measurement: it is free of timing noise and
shows what fused.

Outputs in ``--out`` (default ``benchmarks/results/step_cost_<platform>``):
``records.jsonl`` (one record per case as it is measured: a run cut short keeps
what it finished), ``step_cost.json`` (every measurement and the machine,
library versions, date and command line) and ``step_cost.md`` (the tables,
also printed at the end).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import multinorm_optax as mo
import pretrain.optim
from benchmarks import common, hlo_passes, variants
from models.llama import abstract_params, get_config
from pretrain import mesh as meshlib
from pretrain.config import TrainConfig

ACCELERATOR_MODELS = ("60m", "130m", "350m", "1b")
CPU_MODELS = ("tiny", "60m")


# The cases, in table order: names of `benchmarks.variants.VARIANTS` (a new
# case is a variant there and its name here).
CASES = (
  "sgd",
  "adamw",
  "adafactor",
  "muon",
  "swan",
  # Each whitening mode of multinorm_optax.whiten, named.
  "swan_fast",
  "swan_fast3",
  "swan_exact",
  "swan_newton_schulz",
  "sinkgd_l1",
  "sinkgd_l5",
  "sinkgd_l5_reference",
  "sinkgd_l5_spectral",
  "sinkgd_stateless",
  # The cheaper-step options: warm-started L=1, no separate max|G| read, both.
  "sinkgd_warm_l1",
  "sinkgd_guard",
  "sinkgd_fast",
)
OPTIMIZERS = tuple(CASES)


def case_config(name: str) -> TrainConfig:
  """The TrainConfig of benchmark case `name` (train.py's defaults otherwise)."""
  return variants.config(name)


def build_tx(name: str) -> optax.GradientTransformation:
  """train.py's optimizer for case `name`, with its schedule."""
  return pretrain.optim.make_optimizer(case_config(name))[0]


# ---------------------------------------------------------------------------
# Parameter trees
# ---------------------------------------------------------------------------


def param_shapes(model: str) -> dict:
  """The named LLaMA config's parameters, as ``models.llama.abstract_params``."""
  return abstract_params(get_config(model))


def random_tree(shapes, key, dtype, scale: float):
  """Normal(0, scale^2) arrays shaped like ``shapes``, drawn on the device.

  One draw of every element, then cut into the leaves: a draw per leaf would
  compile one random-number kernel per leaf (seconds on CPU).
  """
  leaves, treedef = jax.tree.flatten(shapes)
  sizes = [math.prod(s.shape) for s in leaves]

  @jax.jit
  def draw(key):
    flat = (scale * jax.random.normal(key, (sum(sizes),), jnp.float32)).astype(
      dtype
    )
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    return treedef.unflatten(
      [x.reshape(s.shape) for x, s in zip(parts, leaves)]
    )

  return jax.block_until_ready(draw(key))


def state_bytes(tx, params) -> tuple[int, int]:
  """(all state bytes, state bytes held for hidden matrices), from shapes alone."""
  labels = mo.default_param_labels(params)
  matrices = jax.tree.map(
    lambda p, label: p if label == "multinorm" else None, params, labels
  )
  state = jax.eval_shape(tx.init, params)
  of_matrix = meshlib.map_like_params(
    lambda *_: True, state, matrices, False, reduced=True
  )
  matrix_leaves = [
    leaf
    for leaf, mine in zip(jax.tree.leaves(state), jax.tree.leaves(of_matrix))
    if mine
  ]
  return common.tree_bytes(state), common.tree_bytes(matrix_leaves)


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def optimizer_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


class TimingPlan(NamedTuple):
  """How each case is timed: ``repeats`` samples of ``calls`` back-to-back calls."""

  repeats: int
  warmup: int
  calls: int
  max_seconds: float | None


def time_calls(
  call: Callable[[], Any],
  sync: Callable[[], Any],
  plan: TimingPlan,
  *,
  cap: bool = True,
) -> dict:
  """Median time of one ``call()``, from samples of ``plan.calls`` calls and one ``sync()``.

  ``call`` only dispatches; ``sync`` blocks until its work is done. Calling
  several times before blocking lets the host dispatch the next call while the
  device runs this one, as a training loop does. ``plan.warmup`` untimed
  samples come first; with ``cap`` and ``plan.max_seconds``, the number of
  timed samples is cut (to 3 at least) so they take about that long, judged
  from the last warm-up sample.
  """

  def sample() -> float:
    return seconds_per_call(call, sync, plan.calls)

  last = None
  for _ in range(plan.warmup):
    last = sample()
  repeats = plan.repeats
  if cap and plan.max_seconds and last is not None:
    repeats = min(repeats, max(3, int(plan.max_seconds / (last * plan.calls))))
  ms = [1e3 * sample() for _ in range(repeats)]
  return {
    "median_ms": statistics.median(ms),
    "min_ms": min(ms),
    "max_ms": max(ms),
    "repeats": repeats,
    "calls_per_sample": plan.calls,
    "samples_ms": ms,
  }


def seconds_per_call(call, sync, calls: int) -> float:
  """Seconds per call of ``calls`` back-to-back ``call()`` and one ``sync()``."""
  t0 = time.perf_counter()
  for _ in range(calls):
    call()
  sync()
  return (time.perf_counter() - t0) / calls


def time_memory_baselines(params, plan: TimingPlan) -> dict:
  """A device copy of every parameter (read + write) and a sum over them (read only).

  The copy writes into a donated buffer of the same shapes, as the donated
  optimizer step does; a copy into fresh memory would also time the allocator
  (on CPU, page faults: several times slower than the copy itself).
  """
  copy = jax.jit(
    lambda dst, src: jax.tree.map(lambda _, x: jnp.copy(x), dst, src),
    donate_argnums=0,
    keep_unused=True,
  )
  read = jax.jit(lambda t: sum(jnp.sum(x) for x in jax.tree.leaves(t)))
  box = {"dst": jax.tree.map(jnp.copy, params), "sum": None}

  def run_copy():
    box["dst"] = copy(box["dst"], params)

  def run_read():
    box["sum"] = read(params)

  plan = plan._replace(repeats=max(plan.repeats, 10))
  copy_t = time_calls(
    run_copy, lambda: jax.block_until_ready(box["dst"]), plan, cap=False
  )
  del box["dst"]
  read_t = time_calls(
    run_read, lambda: jax.block_until_ready(box["sum"]), plan, cap=False
  )
  return {"copy": copy_t, "read": read_t}


def compiled_run(tx, params, grads) -> dict:
  """A fresh copy of ``params`` (the step donates its inputs), its optimizer
  state, the donated step compiled for them and the compile's seconds:
  ``{"params", "state", "step", "compile_s"}``; ``step_once(run, grads)``
  advances it."""
  run = {"params": jax.tree.map(jnp.copy, params)}
  run["state"] = jax.jit(tx.init)(run["params"])
  t0 = time.perf_counter()
  run["step"] = (
    jax.jit(optimizer_step(tx), donate_argnums=(0, 1))
    .lower(run["params"], run["state"], grads)
    .compile()
  )
  run["compile_s"] = time.perf_counter() - t0
  return run


def step_once(run: dict, grads) -> None:
  """One donated step of a `compiled_run`, dispatched (not waited for)."""
  run["params"], run["state"] = run["step"](run["params"], run["state"], grads)


def time_optimizer(tx, params, grads, plan: TimingPlan) -> dict:
  """Times the step on a fresh copy of ``params`` (the step donates its inputs)."""
  run = compiled_run(tx, params, grads)
  compile_s = run["compile_s"]
  result = time_calls(
    lambda: step_once(run, grads),
    lambda: jax.block_until_ready((run["params"], run["state"])),
    plan,
  )
  finite = bool(
    all(jnp.isfinite(x).all() for x in jax.tree.leaves(run["params"]))
  )
  run.clear()
  return {**result, "compile_s": compile_s, "params_finite_after": finite}


# ---------------------------------------------------------------------------
# Static pass count from the compiled HLO
# ---------------------------------------------------------------------------


def count_passes(tx, shape: tuple[int, int], grad_dtype) -> dict:
  """``hlo_passes.count_full_size_traffic`` of one donated step on a single
  hidden matrix."""
  path = {"layers": {0: {"mlp": {"up_proj": {"kernel": None}}}}}
  params = jax.tree.map(
    lambda _: jax.ShapeDtypeStruct(shape, jnp.float32),
    path,
    is_leaf=lambda x: x is None,
  )
  grads = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, grad_dtype), params
  )
  state = jax.eval_shape(tx.init, params)
  hlo = (
    jax.jit(optimizer_step(tx), donate_argnums=(0, 1))
    .lower(params, state, grads)
    .compile()
    .as_text()
  )
  return hlo_passes.count_full_size_traffic(hlo, math.prod(shape))


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def markdown(result: dict) -> str:
  meta = result["metadata"]
  lines = [
    f"Optimizer step cost on {meta['device_kind']} ({meta['platform']}), "
    f"jax {meta['jax']}, optax {meta['optax']}, {meta['date'][:10]}.",
    f"Command: `{meta['command']}`",
    "",
    "One pass = one read or one write of all parameter bytes (float32), timed as half of "
    "a device copy of the parameters (into a donated buffer); passes = step time / pass "
    "time. The step is update + apply_updates, jitted, params and state donated; time = "
    f"median of {result['timing']['repeats']} samples of {result['timing']['calls']} "
    "back-to-back steps, per step. State bytes: all optimizer state / the part held for "
    "hidden matrices.",
    "",
    "| model | params | param bytes | copy ms (read + write) | pass ms | read-only sum ms |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for m in result["models"]:
    lines.append(
      f"| {m['model']} | {m['num_params'] / 1e6:.1f}M | {common.human_bytes(m['param_bytes'])} | "
      f"{m['copy']['median_ms']:.3f} | {m['pass_ms']:.3f} | {m['read']['median_ms']:.3f} |"
    )
  lines += [
    "",
    "| model | grad dtype | optimizer | time ms | passes | ratio to adamw "
    "| state bytes (total / matrices) |",
    "|---|---|---|---:|---:|---:|---|",
  ]
  notes = []
  for m in result["models"]:
    for r in m["steps"]:
      ratio = (
        "" if r["ratio_to_adamw"] is None else f"{r['ratio_to_adamw']:.2f}"
      )
      lines.append(
        f"| {m['model']} | {r['grad_dtype']} | {r['optimizer']} | {r['median_ms']:.3f} | "
        f"{r['passes']:.1f} | {ratio} | {common.human_bytes(r['state_bytes'])} / "
        f"{common.human_bytes(r['state_bytes_matrices'])} |"
      )
      if r["repeats"] < result["timing"]["repeats"]:
        notes.append(
          f"{m['model']} {r['grad_dtype']} {r['optimizer']}: {r['repeats']}"
        )
  if notes:
    lines += [
      "",
      "Fewer timed samples (--max-seconds): " + "; ".join(notes) + ".",
    ]
  if result.get("hlo_passes"):
    h = result["hlo_passes"]
    lines += [
      "",
      f"Static count from the compiled HLO ({meta['platform']}), one {h['model']} "
      f"MLP matrix {tuple(h['shape'])}: instructions outside fusions that read (operands) "
      "or write (results) a full-size array; passes = those bytes / one float32 matrix.",
      "",
      "| grad dtype | optimizer | full-size reads | full-size writes | passes |",
      "|---|---|---:|---:|---:|",
    ]
    for r in h["rows"]:
      loop = " (loop body counted once)" if r["has_loop"] else ""
      if r.get("has_conditional"):
        loop += (
          " (cheapest branch of a conditional; its dearest: "
          f"{r['passes_all_branches']:.1f})"
        )
      lines.append(
        f"| {r['grad_dtype']} | {r['optimizer']} | {r['reads']} | {r['writes']} "
        f"| {r['passes']:.1f}{loop} |"
      )
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--models",
    type=common.csv_list,
    default=None,
    help=f"comma-separated LLaMA configs (default: {','.join(CPU_MODELS)} on "
    f"CPU, {','.join(ACCELERATOR_MODELS)} on GPU/TPU)",
  )
  p.add_argument(
    "--optimizers",
    type=common.csv_list,
    default=list(OPTIMIZERS),
    help=f"comma-separated subset of {','.join(OPTIMIZERS)} (default: all)",
  )
  p.add_argument(
    "--skip", type=common.csv_list, default=[], help="optimizers to leave out"
  )
  p.add_argument(
    "--grad-dtypes",
    type=common.csv_list,
    default=["float32", "bfloat16"],
    help="gradient dtypes (default: float32,bfloat16)",
  )
  p.add_argument(
    "--repeats",
    type=int,
    default=None,
    help="timed samples per case, median reported (default: 20 on GPU/TPU, 5 on CPU)",
  )
  p.add_argument(
    "--calls",
    type=int,
    default=None,
    help="back-to-back steps per sample, one sync at the end; the sample's time "
    "is divided by it (default: 5 on GPU/TPU, 1 on CPU)",
  )
  p.add_argument(
    "--warmup", type=int, default=2, help="untimed samples after compiling (2)"
  )
  p.add_argument(
    "--max-seconds",
    type=float,
    default=10.0,
    help="cut the timed samples of a slow case (to 3 at least) to about this many "
    "seconds; 0 for no limit (default: 10)",
  )
  p.add_argument(
    "--count-passes",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="static full-size read/write count from the compiled HLO of one matrix "
    "(default: on)",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--orientation",
    action="store_true",
    help="only the SR-Sinkhorn orientation table: an LM head, its transpose "
    "and an MLP kernel, then the 60m tree with every leaf normalized, each "
    "case side by side with AdamW, samples interleaved (orientation.*)",
  )
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output folder (default: benchmarks/results/step_cost_<platform>)",
  )
  args = p.parse_args(argv)
  unknown = sorted(set(args.optimizers + args.skip) - set(OPTIMIZERS))
  if unknown:
    p.error(
      f"unknown optimizer(s) {unknown}; choose from {', '.join(OPTIMIZERS)}"
    )
  args.optimizers = [o for o in args.optimizers if o not in args.skip]
  from models.llama import CONFIGS

  unknown = [m for m in args.models or () if m not in CONFIGS]
  if unknown:
    p.error(f"unknown model(s) {unknown}; choose from {', '.join(CONFIGS)}")
  return args


def main(argv=None) -> dict:
  """Runs the benchmark, writes its records, ``step_cost.json`` and
  ``step_cost.md``; returns the JSON dict."""
  args = parse_args(argv)
  with warnings.catch_warnings():
    # sgd has no state to donate; XLA would say so for every call.
    warnings.filterwarnings(
      "ignore", message="Some donated buffers were not usable"
    )
    return run(args, common.argv_of(argv))


def from_records(records: list[dict]) -> dict:
  """The result (as ``step_cost.json`` holds it) of the records written so
  far: a run cut short gives the cases it finished."""
  result = {"models": []}
  passes = []
  for r in records:
    kind = r.pop("kind")
    if kind == "metadata":
      result.update(r)
    elif kind == "model":
      result["models"].append({**r, "steps": []})
    elif kind == "step":
      entry = next(m for m in result["models"] if m["model"] == r["model"])
      entry["steps"].append(r)
    elif kind == "hlo_passes":
      passes.append(r)
  for m in result["models"]:
    adamw = {
      r["grad_dtype"]: r["median_ms"]
      for r in m["steps"]
      if r["optimizer"] == "adamw"
    }
    for r in m["steps"]:
      base = adamw.get(r["grad_dtype"])
      r["ratio_to_adamw"] = None if base is None else r["median_ms"] / base
  if passes:
    result["hlo_passes"] = {
      "model": passes[0]["model"],
      "shape": passes[0]["shape"],
      "rows": passes,
    }
  return result


def run(args: argparse.Namespace, argv_list: list[str]) -> dict:
  platform = jax.default_backend()
  on_cpu = platform == "cpu"
  models = args.models or list(CPU_MODELS if on_cpu else ACCELERATOR_MODELS)
  plan = TimingPlan(
    repeats=args.repeats or (5 if on_cpu else 20),
    warmup=args.warmup,
    calls=args.calls or (1 if on_cpu else 5),
    max_seconds=args.max_seconds,
  )
  out = args.out or common.default_out("step_cost", platform)
  if args.orientation:
    # The whole-tree case on the largest model asked for (default 60m).
    model = (args.models or ["60m"])[-1]
    return orientation(plan, args.seed, out, argv_list, model=model)
  device = jax.devices()[0]
  print(
    f"{device.device_kind} ({platform}); models {','.join(models)}; "
    f"optimizers {','.join(args.optimizers)}; grads {','.join(args.grad_dtypes)}; "
    f"{plan.repeats} samples of {plan.calls} step(s)",
    flush=True,
  )
  with common.RecordWriter(out / common.RECORDS) as records:
    records.write(
      {
        "kind": "metadata",
        "metadata": {
          "platform": platform,
          "device_kind": device.device_kind,
          "device_count": jax.device_count(),
          "cpu_count": os.cpu_count(),
          "date": common.now(),
          "command": common.command_line("step_cost", argv_list),
          "argv": argv_list,
          **common.versions(),
        },
        "learning_rate": {
          name: case_config(name).lr for name in args.optimizers
        },
        "timing": plan._asdict(),
      }
    )
    measure(args, models, plan, records)
  result = from_records(common.read_records(out / common.RECORDS))
  common.write_outputs(out, "step_cost", result, markdown(result))
  return result


def measure(args, models: list[str], plan: TimingPlan, records) -> None:
  """Times every case and counts passes, one record each as it finishes."""
  key = jax.random.key(args.seed)
  for model in models:
    shapes = param_shapes(model)
    key, pkey, gkey = jax.random.split(key, 3)
    params = random_tree(shapes, pkey, jnp.float32, 0.02)
    entry = {
      "model": model,
      "num_params": sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)),
      "param_bytes": common.tree_bytes(shapes),
    }
    entry.update(time_memory_baselines(params, plan))
    entry["pass_ms"] = entry["copy"]["median_ms"] / 2
    records.write({"kind": "model", **entry})
    print(
      f"{model}: {entry['num_params'] / 1e6:.1f}M params, copy "
      f"{entry['copy']['median_ms']:.3f} ms, read {entry['read']['median_ms']:.3f} ms",
      flush=True,
    )
    for grad_dtype in args.grad_dtypes:
      grads = random_tree(shapes, gkey, jnp.dtype(grad_dtype), 1.0)
      for name in args.optimizers:
        tx = build_tx(name)
        total, matrices = state_bytes(tx, shapes)
        timing = time_optimizer(tx, params, grads, plan)
        row = {
          "model": model,
          "optimizer": name,
          "grad_dtype": grad_dtype,
          **timing,
          "passes": timing["median_ms"] / entry["pass_ms"],
          "state_bytes": total,
          "state_bytes_matrices": matrices,
        }
        records.write({"kind": "step", **row})
        print(
          f"  {grad_dtype:8s} {name:20s} {row['median_ms']:10.3f} ms "
          f"{row['passes']:6.1f} passes  ({row['repeats']} samples, "
          f"compile {row['compile_s']:.1f} s)",
          flush=True,
        )
      del grads
    del params

  if args.count_passes:
    model = models[-1]
    shape = param_shapes(model)["layers"][0]["mlp"]["up_proj"]["kernel"].shape
    for grad_dtype in args.grad_dtypes:
      for name in args.optimizers:
        counts = count_passes(build_tx(name), shape, jnp.dtype(grad_dtype))
        records.write(
          {
            "kind": "hlo_passes",
            "model": model,
            "shape": list(shape),
            "optimizer": name,
            "grad_dtype": grad_dtype,
            **counts,
          }
        )


# ---------------------------------------------------------------------------
# SR-Sinkhorn and the matrix's orientation (--orientation)
# ---------------------------------------------------------------------------

# A Flax LM head of the 60m model (d_model, vocab), its transpose, and an MLP
# kernel: SR-Sinkhorn's cost should not depend on which axis is the long one.
ORIENTATION_SHAPES = ((512, 32000), (32000, 512), (512, 1376))


def every_leaf(params) -> Any:
  """Labels normalizing every leaf of two or more axes (embedding and head
  too) with sinkgd; vectors keep its AdamW group."""
  return jax.tree.map(lambda x: "multinorm" if x.ndim >= 2 else "adam", params)


def orientation_cases(
  shapes=ORIENTATION_SHAPES, model: str = "60m"
) -> dict[str, tuple[dict, dict]]:
  """{tree: (parameter shapes, {case: optax transform})}, AdamW first: one
  tree per matrix shape, then the `model`'s whole tree."""
  warm = dict(num_iters=1, warm_start=True, overflow_guard="on_demand")
  sinkgd = functools.partial(mo.sinkgd, 1e-3, param_labels=every_leaf)
  head_cases = {
    "adamw": optax.adamw(1e-3),
    "sinkgd_warm_l1_guard": sinkgd(**warm),
    "sinkgd_cold_l5": sinkgd(num_iters=5),
    "sinkgd_cold_l5_guard": sinkgd(num_iters=5, overflow_guard="on_demand"),
  }
  trees = {
    f"{a}x{b}": (
      {"head": {"kernel": jax.ShapeDtypeStruct((a, b), jnp.float32)}},
      head_cases,
    )
    for a, b in shapes
  }
  trees[model] = (
    param_shapes(model),
    {
      "adamw": build_tx("adamw"),
      "sinkgd_warm_l1_guard_every_leaf": sinkgd(**warm),
      "sinkgd_fast": build_tx("sinkgd_fast"),
      "sinkgd_stateless": build_tx("sinkgd_stateless"),
      "sinkgd_stateless_max_abs": mo.sinkgd_stateless(
        1e-3, overflow_guard="max_abs"
      ),
    },
  )
  return trees


def time_side_by_side(cases: dict, params, grads, plan: TimingPlan) -> dict:
  """{case: [ms per step]}: every case compiled first, then each of
  ``plan.warmup + plan.repeats`` rounds takes one sample of every case in
  turn (warm-up rounds dropped), so a load change on a shared machine moves
  all cases alike and their ratios stay comparable."""
  runs = {name: compiled_run(tx, params, grads) for name, tx in cases.items()}
  samples = {name: [] for name in runs}
  for i in range(plan.warmup + plan.repeats):
    for name, run in runs.items():
      seconds = seconds_per_call(
        lambda run=run: step_once(run, grads),
        lambda run=run: jax.block_until_ready((run["params"], run["state"])),
        plan.calls,
      )
      if i >= plan.warmup:
        samples[name].append(1e3 * seconds)
  return samples


def orientation(
  plan: TimingPlan, seed: int, out: Path, argv_list, **cases_of
) -> dict:
  """The --orientation table, one record per tree as it is measured
  (`cases_of`: `orientation_cases`' arguments)."""
  path = out / "orientation.jsonl"
  key = jax.random.key(seed)
  with common.RecordWriter(path) as records:
    records.write(
      {
        "kind": "metadata",
        "command": common.command_line("step_cost", argv_list),
        "date": common.now(),
        "cpu_count": os.cpu_count(),
        "timing": plan._asdict(),
        **common.versions(),
      }
    )
    for tree, (shapes, cases) in orientation_cases(**cases_of).items():
      key, pkey, gkey = jax.random.split(key, 3)
      params = random_tree(shapes, pkey, jnp.float32, 0.02)
      grads = random_tree(shapes, gkey, jnp.float32, 1.0)
      samples = time_side_by_side(cases, params, grads, plan)
      medians = {k: statistics.median(v) for k, v in samples.items()}
      records.write(
        {
          "kind": "tree",
          "tree": tree,
          "median_ms": medians,
          "ratio_to_adamw": {
            k: v / medians["adamw"] for k, v in medians.items()
          },
          "samples_ms": samples,
        }
      )
      print(tree, {k: round(v, 2) for k, v in medians.items()}, flush=True)
  records = common.read_records(path)
  result = {**records[0], "trees": records[1:]}
  common.write_outputs(out, "orientation", result, orientation_markdown(result))
  return result


def orientation_markdown(result: dict) -> str:
  """Median ms and the ratio to AdamW of every case, tree by tree."""
  lines = ["| tree | case | median ms | / AdamW |", "|---|---|---|---|"]
  for entry in result["trees"]:
    for case, ms in entry["median_ms"].items():
      ratio = entry["ratio_to_adamw"][case]
      lines.append(f"| {entry['tree']} | {case} | {ms:.2f} | {ratio:.2f}x |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  common.run_as_script(main)
