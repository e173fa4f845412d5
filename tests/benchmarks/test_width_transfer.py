"""benchmarks/width_transfer.py: the best-lr table on made-up runs, and one tiny
sweep (two widths x two lrs of 5 steps) end to end."""

import json
import math
import os
import sysconfig

from benchmarks import width_transfer as wt
from benchmarks.sweep import Sizes, train_config

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")


def _run(width, lr, loss, status="ok"):
  return {
    "variant": "sinkgd",
    "width": width,
    "lr": lr,
    "status": status,
    "final_val_loss": loss,
  }


def test_best_lr_per_width_marks_grid_edges_and_skips_diverged_runs():
  runs = [
    _run(64, 0.01, 2.5),
    _run(64, 0.03, 2.2),
    _run(64, 0.1, 2.4),
    _run(128, 0.01, 2.6),
    _run(128, 0.03, 2.5),
    _run(128, 0.1, None, status="diverged"),
  ]
  best = wt.best_lrs(runs)
  assert best[("sinkgd", 64)] == (0.03, False)
  assert best[("sinkgd", 128)] == (0.03, False)
  runs[4]["final_val_loss"] = 2.7  # now 0.01 wins, at the grid's low edge
  assert wt.best_lrs(runs)[("sinkgd", 128)] == (0.01, True)


def test_tiny_width_sweep_runs_every_width(tmp_path):
  result = wt.main(
    [
      "--widths",
      "32,64",
      "--optimizers",
      "sinkgd",
      "--lrs-sinkgd",
      "0.03",
      "--steps",
      "5",
      "--batch-size",
      "8",
      "--seq-len",
      "32",
      "--eval-batches",
      "1",
      "--corpus",
      DATA,
      "--in-process",
      "--out",
      str(tmp_path),
    ]
  )
  runs = result["runs"]
  assert [(r["width"], r["lr"]) for r in runs] == [(32, 0.03), (64, 0.03)]
  assert all(math.isfinite(r["final_val_loss"]) for r in runs)
  # The width reached the model: 4x the parameters' bytes, roughly, at 2x width.
  small, wide = runs[0]["param_bytes"], runs[1]["param_bytes"]
  assert 2.5 * small < wide < 4 * small
  table = (tmp_path / "width_transfer.md").read_text()
  assert "| sinkgd | 0.03 |" in table
  assert (tmp_path / "width_transfer.png").stat().st_size > 0
  saved = json.loads((tmp_path / "width_transfer.json").read_text())
  assert saved["settings"]["widths"] == [32, 64]


def test_rule_variants_are_swept_with_their_update_scale():
  args = wt.parse_args(
    ["--optimizers", "sinkgd_spectral,sinkgd_mup,swan_spectral"]
  )
  sizes = Sizes("tiny", 5, 8, 32, 0, 1)
  for variant in args.optimizers:
    assert getattr(args, f"adam_lr_{variant}") == 3e-2
    config = train_config(sizes, variant, 0.3, 3e-2, 0, DATA, "RUN")
    assert config.update_scale == variant.split("_")[1]
    assert config.optimizer == variant.split("_")[0]
