"""benchmarks/convergence_report.py: the summary and its verdicts on made-up
runs."""

import math

from benchmarks import convergence_report as report
from tests.benchmarks.runs import made_up_run

# ------------------------------------------------------------------ the summary


def _curve(losses):
  return [{"step": 10 * (i + 1), "val_loss": x} for i, x in enumerate(losses)]


def test_summary_uses_the_best_adamw_kind_and_prints_ties_within_the_spread():
  seeds = [0, 1, 2]
  curves = {  # per variant, per seed: the validation curve at steps 10..40
    "adamw": [[3.0, 2.8, 2.7, 2.6]] * 3,
    "adamw2": [[3.0, 2.6, 2.4, 2.30 + 0.01 * s] for s in seeds],
    "sinkgd": [[2.5, 2.3, 2.2, 2.1 + 0.01 * s] for s in seeds],
    "swan": [[2.9, 2.5, 2.35, 2.28 + 0.02 * s] for s in seeds],
  }
  final = {
    v: {
      ("a", s): made_up_run(
        1, None, c[s][-1], variant=v, seed=s, curve=_curve(c[s])
      )
      for s in seeds
    }
    for v, c in curves.items()
  }
  summary = report.summarize(final, ["a"], seeds)["a"]
  assert summary["reference"] == "adamw2"  # lower mean final loss than adamw
  rows = summary["rows"]
  assert rows["adamw2"]["speedup"] == (1.0, 0.0)
  # sinkgd reaches each seed's adamw2 final loss at step 20 (2.3 <= 2.30..2.32).
  assert rows["sinkgd"]["steps"] == [20, 20, 20]
  assert rows["sinkgd"]["speedup"] == (2.0, 0.0)
  assert rows["sinkgd"]["speedup_verdict"] == "faster"
  assert rows["sinkgd"]["loss_verdict"] == "lower"
  # swan: 2.28/2.30/2.32 vs 2.30/2.31/2.32 is inside the spread.
  assert rows["swan"]["loss_verdict"] == "tie"
  assert rows["adamw"]["speedup_verdict"] == "not reached"
  assert rows["adamw"]["reached"] == "0/3"


def test_verdicts():
  assert report.loss_verdict([-0.02, 0.01, 0.0]) == "tie"
  assert report.loss_verdict([-0.1, -0.12, -0.11]) == "lower"
  assert report.loss_verdict([0.1, 0.12]) == "higher"
  assert report.speedup_verdict(1.1, 0.2) == "tie"
  assert report.speedup_verdict(1.5, 0.2) == "faster"
  assert report.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))


def test_one_seed_has_no_spread_and_no_verdict():
  mean, std = report.mean_std([2.5])
  assert mean == 2.5 and math.isnan(std)
  assert report.loss_verdict([-0.1]) == report.ONE_SEED
  assert report.speedup_verdict(1.5, math.nan) == report.ONE_SEED
  final = {
    v: {("a", 0): made_up_run(1, None, x, variant=v, curve=_curve([3.0, x]))}
    for v, x in (("adamw", 2.5), ("sinkgd", 2.2))
  }
  rows = report.summarize(final, ["a"], [0])["a"]["rows"]
  assert rows["sinkgd"]["loss_verdict"] == report.ONE_SEED
  assert rows["sinkgd"]["speedup_verdict"] == report.ONE_SEED
  assert report._pm(rows["sinkgd"]["loss"]) == "2.2000"
