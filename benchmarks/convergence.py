r"""Convergence against the best AdamW: each optimizer tuned, then seeds x corpora.

    python -m benchmarks.convergence --in-process     # CPU default (docs/BENCHMARKS.md)
    python -m benchmarks.convergence --optimizers adamw2,sinkgd --seeds 0 \
        --corpora stdlib

Every run is `pretrain.trainer.train` (train.py's model, data, schedule and step; no second loop)
with the same model, batch, sequence length, steps and schedule (linear warmup over
10% of the steps, then cosine to 10% of the peak). A seed fixes the model's init, the
data order and the validation files, the same for every optimizer.

The protocol:

1. Tuning, on seed --tune-seed of the first corpus. Each optimizer runs every point
   of its grid (`benchmarks.tuning.DEFAULT_GRIDS`, or --lrs-NAME /
   --adam-lrs-NAME): a 1-D grid over
   --lr, or for two lr groups a 2-D grid over --lr x --adam-lr (the hidden matrices'
   lr x the lr of the AdamW group: embeddings, head, norms). `adamw` is plain AdamW
   (one lr for everything); `adamw2` is AdamW with the recipes' two groups, hidden
   matrices at lr and the rest at adam_lr; sinkgd and swan step their matrices
   alpha * lr along the normalized gradient (alpha 0.05). When the best point (lowest
   final validation loss) sits on an edge of its grid along an axis, one point past
   that edge (one grid step further, the other lr kept) is run, until the best is
   inside or --max-extend points were added; a best point still on an edge is
   flagged "edge" in the tables (a one-point axis is no sweep: never an edge).
2. Each optimizer at its best point, on every --seeds x --corpora (the tuning run is
   reused). Ablation variants (--ablations) run at their base optimizer's best point
   on every seed of the first corpus.
3. Per corpus: mean and sample standard deviation over seeds of the final validation
   loss and of the steps to the target, the target of a seed being the final
   validation loss of the best AdamW (the kind, adamw or adamw2, with the lower mean
   final loss on that corpus) on that seed. Speedup = the best AdamW's steps to its
   own final loss / the optimizer's steps, per seed, then mean and std. Losses are
   compared per seed (a seed also picks the validation files): the difference to
   the best AdamW's final loss, mean +- std over seeds, is printed "tie" when
   |mean| <= std; so is a speedup whose mean +- std contains 1. One seed has
   no spread: its numbers are printed alone and no verdict is drawn.

Variants are `benchmarks.variants`' TrainConfig overrides; the run store is
`benchmarks.sweep`'s, the tuning `benchmarks.tuning`'s and the tables and
plots `benchmarks.convergence_report`'s.

Runs are kept as small JSON files in OUT/runs/, named by a hash of their train.py
flags (`benchmarks.sweep`), and appended as they finish to OUT/records.jsonl: running the command again reuses every run whose flags are unchanged, so the
phases can be run (and interrupted) separately; --cached-only reports the stored runs
without training. The key is the flags, not the code: delete OUT/runs/ to measure
changed code. Outputs in OUT: convergence.json (the
settings, machine, versions, command, tuning and final runs, summary), convergence.md
(the tables, also printed) and the plots val_loss_vs_step.png (mean +- std bands) and
lr_sweep.png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks import common, variants
from benchmarks.convergence_report import markdown, plot, summarize
from benchmarks.sweep import Runner, Sizes, runs_platform
from benchmarks.tuning import DEFAULT_GRIDS, tune
from models.llama import ATTENTION_IMPLS

VARIANTS = variants.VARIANTS
DEFAULT_OPTIMIZERS = ("adamw", "adamw2", "sinkgd", "swan", "muon")
DEFAULT_ABLATIONS = (
  "sinkgd_l1",
  "sinkgd_l2",
  "sinkgd_reference",
  "swan_ns3",
  "swan_exact",
  "swan_newton_schulz",
)
# default protocol (~75 runs) fits a 2-core machine's hour.
SIZES = {
  "cpu": {
    "model": "tiny",
    "steps": 200,
    "batch_size": 16,
    "seq_len": 64,
    "eval_every": 20,
    "eval_batches": 8,
  },
  "accelerator": {
    "model": "60m",
    "steps": 2000,
    "batch_size": 32,
    "seq_len": 256,
    "eval_every": 100,
    "eval_batches": 16,
  },
}


# ------------------------------------------------------------------ the command


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  cpu = SIZES["cpu"]
  tuned = [n for n, v in VARIANTS.items() if v.base is None]
  p.add_argument(
    "--optimizers",
    type=common.csv_list,
    default=list(DEFAULT_OPTIMIZERS),
    help=f"comma-separated, from {', '.join(tuned)} "
    f"(default {','.join(DEFAULT_OPTIMIZERS)})",
  )
  ablations = [n for n, v in VARIANTS.items() if v.base is not None]
  p.add_argument(
    "--ablations",
    type=common.csv_list,
    default=[],
    help=f"comma-separated, from {', '.join(ablations)}, or 'default' "
    f"({','.join(DEFAULT_ABLATIONS)}); none unless given",
  )
  for name in tuned:
    lrs, adam_lrs = DEFAULT_GRIDS[name]
    p.add_argument(
      f"--lrs-{name}",
      type=common.float_list,
      default=None,
      metavar="LR,...",
      help=f"{name}'s lr grid (default {','.join(f'{x:g}' for x in lrs)})",
    )
    if adam_lrs:
      p.add_argument(
        f"--adam-lrs-{name}",
        type=common.float_list,
        default=None,
        metavar="LR,...",
        help=f"{name}'s AdamW-group lr grid (default "
        f"{','.join(f'{x:g}' for x in adam_lrs)})",
      )
  for flag, key in (
    ("--model", "model"),
    ("--steps", "steps"),
    ("--batch-size", "batch_size"),
    ("--seq-len", "seq_len"),
    ("--eval-every", "eval_every"),
    ("--eval-batches", "eval_batches"),
  ):
    p.add_argument(
      flag,
      type=str if key == "model" else int,
      default=None,
      help=f"default {cpu[key]} on CPU, {SIZES['accelerator'][key]} on GPU/TPU",
    )
  p.add_argument(
    "--seeds",
    type=common.int_list,
    default=[0, 1, 2],
    help="seeds of the final runs (default 0,1,2)",
  )
  p.add_argument(
    "--tune-seed", type=int, default=0, help="seed of the sweep (%(default)s)"
  )
  p.add_argument(
    "--corpora",
    type=common.csv_list,
    default=["stdlib", "jaxstack"],
    help="train.py --data specs; the sweep uses the first (%(default)s)",
  )
  p.add_argument(
    "--max-extend",
    type=int,
    default=2,
    help="most points added past an edge, per optimizer (%(default)s)",
  )
  p.add_argument(
    "--alpha",
    type=float,
    default=0.05,
    help="sinkgd/swan: hidden matrices step alpha * lr (%(default)s)",
  )
  p.add_argument("--grad-clip", type=float, default=1.0, help="(%(default)s)")
  p.add_argument(
    "--tokenizer", default=None, help="as train.py's (default: bytes)"
  )
  p.add_argument(
    "--tune-only", action="store_true", help="stop after the sweep"
  )
  p.add_argument(
    "--cached-only",
    action="store_true",
    help="train nothing: report the runs stored in OUT/runs/ and list the "
    "missing ones",
  )
  p.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output folder (default benchmarks/results/convergence_<platform>)",
  )
  p.add_argument(
    "--attention",
    default="auto",
    choices=ATTENTION_IMPLS,
    help="as train.py's; a value other than auto is part of each run's key",
  )
  p.add_argument(
    "--dtype",
    default="auto",
    choices=("auto", "float32", "bfloat16"),
    help="as train.py's; a value other than auto is part of each run's key",
  )
  p.add_argument(
    "--scan-layers",
    action="store_true",
    help="as train.py's (compiles faster on deep models); part of each "
    "run's key when given",
  )
  p.add_argument(
    "--in-process",
    action="store_true",
    help="run the trainings in this process (faster on CPU; peak memory is "
    "then not reported)",
  )
  args = p.parse_args(argv)
  if args.ablations == ["default"]:
    args.ablations = list(DEFAULT_ABLATIONS)
  bad = [n for n in args.optimizers if n not in tuned] + [
    n for n in args.ablations if n not in ablations
  ]
  if bad or not args.optimizers:
    p.error(
      f"unknown optimizer(s) {bad}; choose from {', '.join(tuned)} and "
      f"ablations {', '.join(ablations)}"
    )
  missing = [
    n for n in args.ablations if VARIANTS[n].base not in args.optimizers
  ]
  if missing:
    p.error(f"ablation(s) {missing} need their base optimizer in --optimizers")
  if not args.seeds or not args.corpora:
    p.error("--seeds and --corpora need at least one value each")
  return args


def sweep_sizes(args) -> Sizes:
  """What every run of this sweep shares, from the command line."""
  fields = tuple(
    (k, getattr(args, k))
    for k in ("attention", "dtype")
    if getattr(args, k) != "auto"
  ) + ((("scan_layers", True),) if args.scan_layers else ())
  return Sizes(
    **{k: getattr(args, k) for k in SIZES["cpu"]},
    alpha=args.alpha,
    grad_clip=args.grad_clip,
    tokenizer=args.tokenizer,
    fields=fields,
  )


def main(argv=None) -> dict:
  args = parse_args(argv)
  argv_list = common.argv_of(argv)
  info = runs_platform(args, SIZES)
  out = args.out or common.default_out("convergence", info["platform"])
  out.mkdir(parents=True, exist_ok=True)
  grids = {
    name: (
      getattr(args, f"lrs_{name}") or DEFAULT_GRIDS[name][0],
      (getattr(args, f"adam_lrs_{name}", None) or DEFAULT_GRIDS[name][1])
      if VARIANTS[name].two_groups
      else None,
    )
    for name in args.optimizers
  }
  result = {
    "metadata": {
      **info,
      "date": common.now(),
      "command": common.command_line("convergence", argv_list),
      "argv": argv_list,
      "isolated_processes": not args.in_process,
    },
    "settings": {
      **{k: getattr(args, k) for k in SIZES["cpu"]},
      "alpha": args.alpha,
      "grad_clip": args.grad_clip,
      "tokenizer": args.tokenizer or "byte",
      "attention": args.attention,
      "dtype": args.dtype,
      "scan_layers": args.scan_layers,
      "seeds": args.seeds,
      "tune_seed": args.tune_seed,
      "corpora": args.corpora,
      "grids": grids,
      "max_extend": args.max_extend,
      "params": None,
    },
    "tuning": {},
    "points": {},
    "final_runs": [],
    "summary": {},
    "all_runs": [],
  }
  with (
    tempfile.TemporaryDirectory(prefix="convergence_runs_") as scratch,
    common.RecordWriter(out / common.RECORDS) as records,
  ):
    run = Runner(
      sweep_sizes(args),
      out,
      scratch,
      in_process=args.in_process,
      cached_only=args.cached_only,
      records=records,
    )
    for name in args.optimizers:
      runs, best, flags = tune(
        run, name, grids[name], args.tune_seed, args.corpora[0], args.max_extend
      )
      if best is not None:
        result["tuning"][name] = {"runs": runs, "best": best, "edges": flags}
        result["settings"]["params"] = best.get("params")
    if args.tune_only:
      result["all_runs"] = [
        r for t in result["tuning"].values() for r in t["runs"]
      ]
      (out / "convergence.json").write_text(json.dumps(result))
      print(markdown(result), flush=True)
      return result
    final = {
      name: {}
      for name in args.optimizers + args.ablations
      if (VARIANTS[name].base or name) in result["tuning"]
    }
    for name in final:
      best = result["tuning"][VARIANTS[name].base or name]["best"]
      result["points"][name] = {"lr": best["lr"], "adam_lr": best["adam_lr"]}
    # Seed by seed, so that a run cut short leaves whole seeds behind it.
    plan = [
      (corpus, seed, name)
      for corpus in args.corpora
      for seed in args.seeds
      for name in args.optimizers
    ] + [
      (args.corpora[0], seed, name)
      for name in args.ablations
      for seed in args.seeds
    ]
    for corpus, seed, name in plan:
      if name not in final:
        continue
      point = result["points"][name]
      r = run(name, point["lr"], point["adam_lr"], seed, corpus)
      if r is None:
        continue
      final[name][(corpus, seed)] = r
      result["final_runs"].append(r)
      point["state_bytes"] = r["state_bytes"]
    result["metadata"]["runs_trained"] = run.count
    result["metadata"]["runs_missing"] = run.missing
  result["summary"] = summarize(final, args.corpora, args.seeds)
  result["all_runs"] = result["final_runs"] + [
    r for t in result["tuning"].values() for r in t["runs"]
  ]
  common.write_outputs(out, "convergence", result, markdown(result), plot)
  return result


if __name__ == "__main__":
  common.run_as_script(main)
