"""benchmarks/convergence.py: the protocol's pure parts on made-up runs, and one tiny
end-to-end sweep (three runs of 10 steps on the stdlib's json package)."""

import json
import math
import os
import sysconfig

import numpy as np
import pytest

from benchmarks import convergence as cv
from pretrain.cli import parse_args
from pretrain.runtime import model_config

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")


def _run(lr, adam_lr, loss, *, variant="sinkgd", seed=0, corpus="a", curve=()):
  return {
    "variant": variant,
    "lr": lr,
    "adam_lr": adam_lr,
    "seed": seed,
    "corpus": corpus,
    "status": "ok",
    "final_val_loss": loss,
    "curve": list(curve),
  }


# ------------------------------------------------------------------ the grid


def test_a_best_point_inside_a_3x3_grid_has_no_edge_and_no_next_point():
  runs = [
    _run(lr, alr, 2.0 + abs(i - 1) + abs(j - 1))
    for i, lr in enumerate((0.01, 0.03, 0.1))
    for j, alr in enumerate((0.01, 0.03, 0.1))
  ]
  best = min(runs, key=cv.final_loss)
  assert (best["lr"], best["adam_lr"]) == (0.03, 0.03)
  assert cv.edges(runs, best) == []
  assert cv.next_point(runs) is None


def test_a_best_point_on_an_edge_is_flagged_and_extended_one_step_past_it():
  runs = [
    _run(lr, alr, 2.0 + i + abs(j - 1))  # lower lr is better: edge at 0.01
    for i, lr in enumerate((0.01, 0.03, 0.1))
    for j, alr in enumerate((0.01, 0.03, 0.1))
  ]
  best = min(runs, key=cv.final_loss)
  assert cv.edges(runs, best) == ["lr low"]
  lr, alr = cv.next_point(runs)
  assert alr == 0.03 and lr == pytest.approx(0.01 / 3)
  # The added point is worse: the best is now inside its line.
  runs.append(_run(lr, alr, 9.0))
  assert cv.next_point(runs) is None
  # A diverged run counts as worse than any finite one.
  diverged = dict(_run(0.001, 0.03, None), status="diverged")
  assert cv.final_loss(diverged) == math.inf


def test_a_one_lr_grid_is_extended_along_lr_only():
  runs = [_run(lr, None, loss) for lr, loss in ((1e-3, 2.0), (3e-3, 1.5))]
  assert cv.edges(runs, runs[1]) == ["lr high"]
  lr, alr = cv.next_point(runs)
  assert alr is None and lr == pytest.approx(9e-3)


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
      ("a", s): _run(1, None, c[s][-1], variant=v, seed=s, curve=_curve(c[s]))
      for s in seeds
    }
    for v, c in curves.items()
  }
  summary = cv.summarize(final, ["a"], seeds)["a"]
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
  assert cv.loss_verdict([-0.02, 0.01, 0.0]) == "tie"
  assert cv.loss_verdict([-0.1, -0.12, -0.11]) == "lower"
  assert cv.loss_verdict([0.1, 0.12]) == "higher"
  assert cv.speedup_verdict(1.1, 0.2) == "tie"
  assert cv.speedup_verdict(1.5, 0.2) == "faster"
  assert cv.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("convergence")
  argv = [
    "--optimizers",
    "adamw,adamw2,sinkgd",
    "--lrs-adamw",
    "3e-3",
    "--lrs-adamw2",
    "3e-3",
    "--adam-lrs-adamw2",
    "1e-2",
    "--lrs-sinkgd",
    "3e-2",
    "--adam-lrs-sinkgd",
    "3e-2",
    "--max-extend",
    "0",
    "--seeds",
    "0",
    "--corpora",
    DATA,
    "--steps",
    "10",
    "--batch-size",
    "8",
    "--seq-len",
    "32",
    "--eval-every",
    "5",
    "--eval-batches",
    "1",
    "--out",
    str(out),
  ]
  cv.main(argv)
  return out, argv


def test_tiny_sweep_writes_tables_plots_and_reusable_runs(out_dir):
  out, argv = out_dir
  for name in ("convergence.json", "convergence.md", "val_loss_vs_step.png"):
    assert (out / name).stat().st_size > 0, name
  table = (out / "convergence.md").read_text()
  for name in ("adamw", "adamw2", "sinkgd"):
    assert f"| {name} |" in table
  result = json.loads((out / "convergence.json").read_text())
  runs = result["final_runs"]
  assert [r["variant"] for r in runs] == ["adamw", "adamw2", "sinkgd"]
  for r in runs:
    assert r["status"] == "ok" and math.isfinite(r["final_val_loss"])
    assert [e["step"] for e in r["curve"]] == [5, 10]
  # adamw2 and sinkgd ran with --adam-lr; plain adamw without.
  assert "--adam-lr" not in runs[0]["train_argv"]
  assert "--adam-lr" in runs[1]["train_argv"]
  assert runs[2]["state_bytes"] < runs[0]["state_bytes"] / 4
  summary = result["summary"][DATA]
  assert summary["reference"] in ("adamw", "adamw2")
  assert len(list((out / "runs").glob("*.json"))) == 3
  # A second call reuses every stored run (none is trained again).
  again = cv.main(argv)
  assert again["metadata"]["runs_trained"] == 0
  assert [r["final_val_loss"] for r in again["final_runs"]] == [
    r["final_val_loss"] for r in runs
  ]


def test_unknown_optimizer_or_orphan_ablation_is_a_usage_error():
  with pytest.raises(SystemExit):
    cv.parse_args(["--optimizers", "adamw,lion"])
  with pytest.raises(SystemExit):
    cv.parse_args(["--optimizers", "adamw", "--ablations", "sinkgd_l1"])


def test_grids_of_the_shape_rules_take_sinkgd_s_step_at_the_tiny_model():
  """Their centre, times the rule's factor at the tiny model's square
  (d_model, d_model) matrices, is sinkgd's centre (to the 3 digits kept)."""
  config = model_config(parse_args([]), cv.load_tokenizer(None))
  d = config.d_model
  for variant, base in (
    ("sinkgd_spectral", "sinkgd"),
    ("sinkgd_mup", "sinkgd"),
    ("swan_spectral", "swan"),
  ):
    rule = cv.VARIANTS[variant].flags[1]
    lrs, adam_lrs = cv.DEFAULT_GRIDS[variant]
    factor = cv.mo.update_scale_factor(rule, d, d)
    np.testing.assert_allclose(
      np.array(lrs) * factor, cv.DEFAULT_GRIDS[base][0], rtol=5e-3
    )
    assert adam_lrs == cv.DEFAULT_GRIDS[base][1]
