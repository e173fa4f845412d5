"""benchmarks/convergence.py end to end: one tiny sweep (three runs of 10
steps on the stdlib's json package), reused when run again; usage errors."""

import json
import math
import os
import sysconfig

import pytest

from benchmarks import common
from benchmarks import convergence as cv

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")


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
    "--in-process",
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
  # One seed: no spread, no verdict drawn from it.
  assert "1 seed (no spread)" in table and "± 0.0000" not in table
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
  # Each run was also appended to the records as it finished.
  kept = [r["variant"] for r in common.read_records(out / common.RECORDS)]
  assert kept == ["adamw", "adamw2", "sinkgd"]
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
