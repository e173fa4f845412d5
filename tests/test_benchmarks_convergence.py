"""Smoke test of benchmarks/convergence.py at a tiny size: outputs exist and are sane.

Two optimizers, one learning rate each, 10 steps on a small real corpus (the stdlib's
json package), each run in its own process as by default. No timing assertions.
"""

import json
import math
import os
import sysconfig

import pytest

from benchmarks import convergence

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")
OPTIMIZERS = ("adamw", "sinkgd")
PLOTS = (
  "val_loss_vs_step.png",
  "val_loss_vs_time.png",
  "memory.png",
  "lr_sweep.png",
)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("convergence")
  convergence.main(
    [
      "--optimizers",
      ",".join(OPTIMIZERS),
      "--lrs-adamw",
      "3e-3",
      "--lrs-sinkgd",
      "1e-2",
      "--model",
      "tiny",
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
      "--data",
      DATA,
      "--out",
      str(out),
    ]
  )
  return out


def test_tiny_sweep_writes_json_markdown_and_plots(out_dir):
  for name in ("convergence.json", "convergence.md", *PLOTS):
    assert (out_dir / name).stat().st_size > 0, name
  table = (out_dir / "convergence.md").read_text()
  for name in OPTIMIZERS:
    assert f"| {name} |" in table


def test_every_run_has_finite_losses_on_the_same_eval_steps(out_dir):
  result = json.loads((out_dir / "convergence.json").read_text())
  runs = result["runs"]
  assert [(r["optimizer"], r["lr"]) for r in runs] == [
    ("adamw", 3e-3),
    ("sinkgd", 1e-2),
  ]
  for r in runs:
    assert r["status"] == "ok"
    assert [e["step"] for e in r["curve"]] == [5, 10]
    assert [e["tokens"] for e in r["curve"]] == [5 * 8 * 32, 10 * 8 * 32]
    assert len(r["history"]) == 10
    for value in (
      r["final_val_loss"],
      r["final_val_ppl"],
      *(e["val_loss"] for e in r["curve"]),
      *(h["loss"] for h in r["history"]),
    ):
      assert math.isfinite(value)
    times = [e["time_s"] for e in r["curve"]]
    assert 0 < times[0] <= times[1]
  assert result["metadata"]["command"].startswith(
    "python benchmarks/convergence.py"
  )


def test_summary_has_each_optimizer_with_best_lr_and_a_speedup(out_dir):
  result = json.loads((out_dir / "convergence.json").read_text())
  summary = {row["optimizer"]: row for row in result["summary"]}
  assert set(summary) == set(OPTIMIZERS)
  assert (
    summary["adamw"]["best_lr"] == 3e-3 and summary["sinkgd"]["best_lr"] == 1e-2
  )
  assert summary["adamw"]["speedup_steps"] >= 1.0  # reaches its own final loss
  for row in summary.values():
    assert math.isfinite(row["final_val_loss"])
    speedup = row["speedup_steps"]
    assert speedup == "not reached" or (
      isinstance(speedup, float) and speedup > 0
    )
    if isinstance(speedup, float):
      assert row["reached_step"] in (5, 10)
    # CPUs do not report peak memory; the state bytes stand in for it.
    assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0
  param_bytes = summary["adamw"]["param_bytes"]
  assert summary["adamw"]["state_bytes"] >= 2 * param_bytes  # mu and nu
  assert (
    0 < summary["sinkgd"]["state_bytes"] < summary["adamw"]["state_bytes"] / 4
  )


def test_unknown_optimizer_is_a_usage_error():
  with pytest.raises(SystemExit):
    convergence.parse_args(["--optimizers", "adamw,lion"])
