r"""Width transfer: does each optimizer's best lr stay put as the model widens?

    python -m benchmarks.width_transfer --in-process     # CPU default, one seed

The tiny LLaMA at several widths (train.py --d-model: same depth and head size,
heads and d_ff scaled with d_model), each optimizer swept over one lr grid, the
same grid at every width. For sinkgd and swan the swept lr is train.py's --lr (the
hidden matrices step alpha * lr, alpha 0.05): if their best lr is the same at every
width, the paper's alpha = 0.05 transfers across width; if it moves, it must be
retuned. sinkgd_spectral, sinkgd_mup and swan_spectral scale each matrix's
step by a factor of its shape (train.py --update-scale,
multinorm_optax.update_scale): a rule transfers if its best lr stays put.
Two-group AdamW sweeps its matrices' lr the same way. The AdamW group's lr
(embeddings, head, norms) stays fixed per optimizer (--adam-lr-NAME, default the
value the convergence sweep chose on the tiny model); muon's stays at train.py's.

Runs are short (`SIZES`) and use one seed by default: the table reports which grid
point is best, and a best point on the grid's edge is marked, not extended. Every
run is `benchmarks.sweep`'s, as convergence's (pretrain.trainer.train in-process
or in a fresh process, stored in OUT/runs/ and reused when rerun with the same
settings, appended to OUT/records.jsonl as it finishes).

Outputs in --out (default benchmarks/results/width_transfer_<platform>):
width_transfer.json, width_transfer.md (the table of the best lr per width, and
every final loss) and width_transfer.png (final loss against lr, one panel per
optimizer, one line per width).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from benchmarks import common
from benchmarks.convergence_report import format_lr
from benchmarks.sweep import Runner, Sizes, final_loss, runs_platform
from benchmarks.tuning import DEFAULT_GRIDS

DEFAULT_WIDTHS = (64, 128, 256, 512)
DEFAULT_OPTIMIZERS = ("adamw2", "sinkgd", "swan", "muon")
# Swept lr (train.py's --lr), the same at every width, ~3x apart, centred on the
# tiny model's (d_model 128) tuned values.
DEFAULT_LRS = {
  "adamw2": (3e-4, 1e-3, 3e-3),
  "sinkgd": (1e-2, 3e-2, 0.1),
  "swan": (1e-2, 3e-2, 0.1),
  "muon": (6e-3, 0.02, 0.06),
  # Shape rules (multinorm_optax.update_scale): convergence.py's grids, which
  # take sinkgd/swan's step at d_model 128.
  **{
    v: DEFAULT_GRIDS[v][0]
    for v in ("sinkgd_spectral", "sinkgd_mup", "swan_spectral")
  },
}
# Fixed lr of the AdamW group (embeddings, head, norms); None: train.py's default.
DEFAULT_ADAM_LRS = {
  "adamw2": 3e-2,
  "sinkgd": 3e-2,
  "swan": 3e-2,
  "muon": None,
  "sinkgd_spectral": 3e-2,
  "sinkgd_mup": 3e-2,
  "swan_spectral": 3e-2,
}
SIZES = {
  "cpu": {
    "model": "tiny",
    "steps": 100,
    "batch_size": 8,
    "seq_len": 64,
    "eval_every": 0,
    "eval_batches": 8,
  },
  "accelerator": {
    "model": "tiny",
    "steps": 1000,
    "batch_size": 32,
    "seq_len": 128,
    "eval_every": 0,
    "eval_batches": 16,
  },
}


def best_lrs(runs: list[dict]) -> dict:
  """{(variant, width): (best lr, on an edge of the lr grid?)}."""
  out = {}
  for key in {(r["variant"], r["width"]) for r in runs}:
    line = [r for r in runs if (r["variant"], r["width"]) == key]
    best = min(line, key=final_loss)
    lrs = [r["lr"] for r in line]
    edge = best["lr"] in (min(lrs), max(lrs)) and len(lrs) > 1
    out[key] = (best["lr"] if final_loss(best) < math.inf else None, edge)
  return out


def _width_table_head(title: str, column: str, widths: list[int]) -> list[str]:
  """A titled table's first lines: optimizer, `column`, then one per width."""
  return [
    "",
    f"### {title}",
    "",
    f"| optimizer | {column} | " + " | ".join(f"d={w}" for w in widths) + " |",
    "|---|---|" + "---|" * len(widths),
  ]


def markdown(result: dict) -> str:
  meta, s = result["metadata"], result["settings"]
  widths, runs = s["widths"], result["runs"]
  best = best_lrs(runs)
  lines = [
    f"Width transfer on {meta['device_kind']} ({meta['platform']}, "
    f"{meta['cpu_count']} CPU cores), {meta['date']}; jax {meta['jax']}.",
    "",
    f"Command: `{meta['command']}`",
    "",
    f"Model `{s['model']}` at d_model {', '.join(map(str, widths))} (same depth "
    f"and head size), {s['steps']} steps of {s['batch_size']} x {s['seq_len']} "
    f"byte tokens of {s['corpus']}, seed {s['seed']} (one seed: a best lr is "
    "a grid point, not a measured optimum), warmup 10% then cosine. AdamW-group "
    "lr fixed: "
    + ", ".join(
      f"{v} {format_lr(a) if a else 'train.py default'}"
      for v, a in s["adam_lrs"].items()
    )
    + ".",
    *_width_table_head(
      "Best lr per width (* = on the edge of the grid)", "grid", widths
    ),
  ]
  for variant, lrs in s["lrs"].items():
    cells = []
    for w in widths:
      lr, edge = best.get((variant, w), (None, False))
      cells.append("n/a" if lr is None else f"{lr:g}{'*' if edge else ''}")
    grid = ", ".join(f"{x:g}" for x in lrs)
    lines.append(f"| {variant} | {grid} | " + " | ".join(cells) + " |")
  lines += _width_table_head("Final validation loss", "lr", widths)
  for variant, lrs in s["lrs"].items():
    for lr in lrs:
      cells = []
      for w in widths:
        match = [
          r
          for r in runs
          if (r["variant"], r["width"], r["lr"]) == (variant, w, lr)
        ]
        loss = final_loss(match[0]) if match else None
        text = (
          "—"
          if loss is None
          else f"{loss:.4f}"
          if math.isfinite(loss)
          else match[0]["status"]
        )
        if match and best[(variant, w)][0] == lr:
          text = f"**{text}**"
        cells.append(text)
      lines.append(f"| {variant} | {lr:g} | " + " | ".join(cells) + " |")
  lines += ["", "![final loss vs lr per width](width_transfer.png)"]
  return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
  s, runs = result["settings"], result["runs"]
  variants = list(s["lrs"])
  fig, axes = common.panels(len(variants), 3.6, 3.4)
  for ax, variant in zip(axes[0], variants):
    for w in s["widths"]:
      line = sorted(
        (
          r
          for r in runs
          if (r["variant"], r["width"]) == (variant, w)
          and final_loss(r) < math.inf
        ),
        key=lambda r: r["lr"],
      )
      ax.plot(
        [r["lr"] for r in line],
        [r["final_val_loss"] for r in line],
        marker="o",
        label=f"d={w}",
      )
    common.lr_axes(ax, variant, "lr (sinkgd/swan matrices: 0.05 x lr)")
  axes[0][0].set_ylabel("final validation loss")
  common.save_figure(fig, out / "width_transfer.png")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--widths",
    type=common.int_list,
    default=list(DEFAULT_WIDTHS),
    help=f"d_model values (default {','.join(map(str, DEFAULT_WIDTHS))})",
  )
  p.add_argument(
    "--optimizers",
    type=common.csv_list,
    default=list(DEFAULT_OPTIMIZERS),
    help=f"from {', '.join(DEFAULT_LRS)} (default "
    f"{','.join(DEFAULT_OPTIMIZERS)})",
  )
  for name, lrs in DEFAULT_LRS.items():
    p.add_argument(
      f"--lrs-{name}",
      type=common.float_list,
      default=None,
      metavar="LR,...",
      help=f"(default {','.join(f'{x:g}' for x in lrs)})",
    )
    p.add_argument(
      f"--adam-lr-{name}",
      type=float,
      default=DEFAULT_ADAM_LRS[name],
      help="fixed lr of the AdamW group (%(default)s)",
    )
  cpu = SIZES["cpu"]
  for key in ("steps", "batch_size", "seq_len", "eval_batches"):
    p.add_argument(
      f"--{key.replace('_', '-')}",
      type=int,
      default=None,
      help=f"default {cpu[key]} on CPU, {SIZES['accelerator'][key]} on GPU/TPU",
    )
  p.add_argument("--seed", type=int, default=0, help="(%(default)s)")
  p.add_argument("--corpus", default="stdlib", help="(%(default)s)")
  p.add_argument("--out", type=Path, default=None)
  p.add_argument(
    "--in-process", action="store_true", help="as convergence.py's"
  )
  p.add_argument(
    "--cached-only",
    action="store_true",
    help="as convergence.py's: train nothing, tabulate the stored runs "
    "(missing ones are listed and shown as —)",
  )
  args = p.parse_args(argv)
  bad = sorted(set(args.optimizers) - set(DEFAULT_LRS))
  if bad or not args.optimizers or not args.widths:
    p.error(f"unknown optimizer(s) {bad}; choose from {', '.join(DEFAULT_LRS)}")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  argv_list = common.argv_of(argv)
  info = runs_platform(args, SIZES)
  out = args.out or common.default_out("width_transfer", info["platform"])
  out.mkdir(parents=True, exist_ok=True)
  lrs = {
    v: getattr(args, f"lrs_{v}") or DEFAULT_LRS[v] for v in args.optimizers
  }
  adam_lrs = {
    v: getattr(args, f"adam_lr_{v.replace('-', '_')}") for v in args.optimizers
  }
  result = {
    "metadata": {
      **info,
      "date": common.now(),
      "command": common.command_line("width_transfer", argv_list),
    },
    "settings": {
      **{k: getattr(args, k) for k in SIZES["cpu"]},
      "widths": args.widths,
      "seed": args.seed,
      "corpus": args.corpus,
      "lrs": lrs,
      "adam_lrs": adam_lrs,
    },
    "runs": [],
  }
  sizes = Sizes(**{k: getattr(args, k) for k in SIZES["cpu"]})
  with (
    tempfile.TemporaryDirectory(prefix="width_runs_") as scratch,
    common.RecordWriter(out / common.RECORDS) as records,
  ):
    run = Runner(
      sizes,
      out,
      scratch,
      in_process=args.in_process,
      cached_only=args.cached_only,
      records=records,
    )
    for width in args.widths:  # narrow first: the cheap results come early
      for variant in args.optimizers:
        for lr in lrs[variant]:
          r = run(
            variant,
            lr,
            adam_lrs[variant],
            args.seed,
            args.corpus,
            {"d_model": width},
          )
          if r is None:  # --cached-only and not stored
            continue
          result["runs"].append({**r, "width": width})
          (out / "width_transfer.json").write_text(json.dumps(result))
  result["metadata"]["runs_trained"] = run.count
  result["metadata"]["runs_missing"] = run.missing
  common.write_outputs(out, "width_transfer", result, markdown(result), plot)
  return result


if __name__ == "__main__":
  common.run_as_script(main)
