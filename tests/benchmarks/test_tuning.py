"""benchmarks/tuning.py: the grid's edges and the points past them, on made-up
runs."""

import math

import numpy as np
import pytest

import multinorm_optax as mo
from benchmarks import tuning
from benchmarks.sweep import final_loss
from benchmarks.variants import VARIANTS
from models.llama import get_config
from tests.benchmarks.runs import made_up_run

# ------------------------------------------------------------------ the grid


def test_a_best_point_inside_a_3x3_grid_has_no_edge_and_no_next_point():
  runs = [
    made_up_run(lr, alr, 2.0 + abs(i - 1) + abs(j - 1))
    for i, lr in enumerate((0.01, 0.03, 0.1))
    for j, alr in enumerate((0.01, 0.03, 0.1))
  ]
  best = min(runs, key=final_loss)
  assert (best["lr"], best["adam_lr"]) == (0.03, 0.03)
  assert tuning.edges(runs, best) == []
  assert tuning.next_point(runs) is None


def test_a_best_point_on_an_edge_is_flagged_and_extended_one_step_past_it():
  runs = [
    made_up_run(
      lr, alr, 2.0 + i + abs(j - 1)
    )  # lower lr is better: edge at 0.01
    for i, lr in enumerate((0.01, 0.03, 0.1))
    for j, alr in enumerate((0.01, 0.03, 0.1))
  ]
  best = min(runs, key=final_loss)
  assert tuning.edges(runs, best) == ["lr low"]
  lr, alr = tuning.next_point(runs)
  assert alr == 0.03 and lr == pytest.approx(0.01 / 3)
  # The added point is worse: the best is now inside its line.
  runs.append(made_up_run(lr, alr, 9.0))
  assert tuning.next_point(runs) is None
  # A diverged run counts as worse than any finite one.
  diverged = dict(made_up_run(0.001, 0.03, None), status="diverged")
  assert final_loss(diverged) == math.inf


def test_a_one_lr_grid_is_extended_along_lr_only():
  runs = [
    made_up_run(lr, None, loss) for lr, loss in ((1e-3, 2.0), (3e-3, 1.5))
  ]
  assert tuning.edges(runs, runs[1]) == ["lr high"]
  lr, alr = tuning.next_point(runs)
  assert alr is None and lr == pytest.approx(9e-3)


def test_a_one_point_axis_is_no_sweep_and_never_an_edge():
  one = [made_up_run(3e-3, 3e-2, 2.0)]
  assert tuning.edges(one, one[0]) == []
  assert tuning.next_point(one) is None
  # One lr, three adam_lrs: the adam_lr axis is still a sweep.
  line = [
    made_up_run(3e-3, alr, 2.0 + i) for i, alr in enumerate((1e-2, 3e-2, 0.1))
  ]
  assert tuning.edges(line, line[0]) == ["adam_lr low"]


def test_grids_of_the_shape_rules_take_sinkgd_s_step_at_the_tiny_model():
  """Their centre, times the rule's factor at the tiny model's square
  (d_model, d_model) matrices, is sinkgd's centre (to the 3 digits kept)."""
  d = get_config("tiny").d_model
  grids = tuning.DEFAULT_GRIDS
  for variant, base in (
    ("sinkgd_spectral", "sinkgd"),
    ("sinkgd_mup", "sinkgd"),
    ("swan_spectral", "swan"),
  ):
    rule = VARIANTS[variant].overrides["update_scale"]
    lrs, adam_lrs = grids[variant]
    factor = mo.update_scale_factor(rule, d, d)
    np.testing.assert_allclose(
      np.array(lrs) * factor, grids[base][0], rtol=5e-3
    )
    assert adam_lrs == grids[base][1]
