"""Smoke test of benchmarks/step_cost.py at the tiny size: outputs exist and are sane.

No timing assertions: times are only checked to be positive and finite.
"""

import json
import math

import jax
import pytest

from benchmarks import common, step_cost

OPTIMIZERS = ("sgd", "adamw", "swan", "sinkgd_l5", "sinkgd_stateless")
GRAD_DTYPES = ("float32", "bfloat16")


def _matrix_param_bytes(shapes) -> int:
  labels = step_cost.mo.default_param_labels(shapes)
  return sum(
    common.tree_bytes(s)
    for s, label in zip(jax.tree.leaves(shapes), jax.tree.leaves(labels))
    if label == "multinorm"
  )


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("step_cost")
  step_cost.main(
    [
      "--models",
      "tiny",
      "--repeats",
      "2",
      "--warmup",
      "1",
      "--optimizers",
      ",".join(OPTIMIZERS),
      "--grad-dtypes",
      ",".join(GRAD_DTYPES),
      "--out",
      str(out),
    ]
  )
  return out


def test_tiny_run_writes_finite_times_and_expected_state_bytes(out_dir):
  result = json.loads((out_dir / "step_cost.json").read_text())
  table = (out_dir / "step_cost.md").read_text()
  assert result["metadata"]["platform"] == "cpu"
  [model] = result["models"]
  assert model["model"] == "tiny"
  for baseline in ("copy", "read"):
    assert (
      math.isfinite(model[baseline]["median_ms"])
      and model[baseline]["median_ms"] > 0
    )

  steps = {(r["optimizer"], r["grad_dtype"]): r for r in model["steps"]}
  assert set(steps) == {(o, d) for o in OPTIMIZERS for d in GRAD_DTYPES}
  for (name, dtype), r in steps.items():
    assert r["repeats"] == 2 and len(r["samples_ms"]) == 2
    for t in (
      r["median_ms"],
      r["min_ms"],
      r["passes"],
      r["ratio_to_adamw"],
      *r["samples_ms"],
    ):
      assert math.isfinite(t) and t > 0, (name, dtype, t)
    assert r["params_finite_after"], (name, dtype)
    assert f"| tiny | {dtype} | {name} |" in table

  shapes = step_cost.param_shapes("tiny")
  param_bytes = common.tree_bytes(shapes)
  assert model["param_bytes"] == param_bytes
  for dtype in GRAD_DTYPES:
    assert steps["adamw", dtype]["ratio_to_adamw"] == 1.0
    assert steps["adamw", dtype]["state_bytes"] >= 2 * param_bytes  # mu and nu
    assert steps["adamw", dtype][
      "state_bytes_matrices"
    ] >= 2 * _matrix_param_bytes(shapes)
    # train.py's sgd keeps only its schedule's int32 step count.
    assert steps["sgd", dtype]["state_bytes"] == 4
    # sinkgd_stateless: one int32 step count per group (4), nothing else.
    assert steps["sinkgd_stateless", dtype]["state_bytes"] == 16
    for stateless in ("swan", "sinkgd_l5"):
      assert steps[stateless, dtype]["state_bytes_matrices"] == 0
      # AdamW state for embeddings, head and norms only.
      assert (
        0
        < steps[stateless, dtype]["state_bytes"]
        < steps["adamw", dtype]["state_bytes"]
      )


def test_tiny_run_counts_full_size_reads_and_writes_in_the_hlo(out_dir):
  result = json.loads((out_dir / "step_cost.json").read_text())
  rows = {
    (r["optimizer"], r["grad_dtype"]): r for r in result["hlo_passes"]["rows"]
  }
  assert set(rows) == {(o, d) for o in OPTIMIZERS for d in GRAD_DTYPES}
  for dtype in GRAD_DTYPES:
    # p <- p - lr * g reads p and g and writes p: nothing less is possible.
    assert (
      rows["sgd", dtype]["reads"] >= 2 and rows["sgd", dtype]["writes"] >= 1
    )
    # AdamW also reads and writes mu and nu.
    assert (
      rows["adamw", dtype]["reads"] >= 4 and rows["adamw", dtype]["writes"] >= 3
    )
    # SR-Sinkhorn reads the gradient at least once per half-step, then writes p.
    assert (
      rows["sinkgd_l5", dtype]["reads"] >= 11
      and rows["sinkgd_l5", dtype]["writes"] >= 1
    )
  assert "full-size reads" in (out_dir / "step_cost.md").read_text()


def test_sinkgd_fast_options_move_fewer_full_size_bytes():
  """The on-demand guard drops the max|G| read; warm-started L=1 with it moves
  no more full-size bytes than AdamW (the issue's static target)."""
  passes = {
    name: step_cost.count_passes(
      step_cost.build_tx(name), (128, 344), jax.numpy.dtype("float32")
    )["passes"]
    for name in ("adamw", "sinkgd_l5", "sinkgd_guard", "sinkgd_fast")
  }
  assert passes["sinkgd_guard"] < passes["sinkgd_l5"], passes
  assert passes["sinkgd_fast"] <= passes["adamw"], passes


def test_orientation_table_times_every_case_beside_adamw(tmp_path):
  # Small stand-ins for the LM head and its transpose; the long axis is past
  # sinkhorn.LONG_ROW, so the CPU's row-by-row sum is what runs.
  shapes = ((16, 4096), (4096, 16))
  plan = step_cost.TimingPlan(repeats=2, warmup=1, calls=1, max_seconds=None)
  result = step_cost.orientation(
    plan, 0, tmp_path, ["--orientation"], shapes=shapes, model="tiny"
  )
  trees = [t["tree"] for t in result["trees"]]
  assert trees == ["16x4096", "4096x16", "tiny"]
  for entry in result["trees"]:
    assert entry["ratio_to_adamw"]["adamw"] == 1.0
    samples = entry["samples_ms"].values()
    assert all(
      len(s) == 2 and all(0 < x < math.inf for x in s) for s in samples
    )
  cases = result["trees"][-1]["median_ms"]
  assert {"sinkgd_stateless", "sinkgd_stateless_max_abs"} <= set(cases)
  # One record per tree, written as it was measured, and the table.
  lines = (tmp_path / "orientation.jsonl").read_text().splitlines()
  assert [json.loads(x)["kind"] for x in lines] == ["metadata"] + ["tree"] * 3
  table = (tmp_path / "orientation.md").read_text()
  assert "| 4096x16 | sinkgd_cold_l5_guard |" in table
