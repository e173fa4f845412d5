"""benchmarks/throughput.py on the tiny model: every optimizer side by side."""

import json
import math

import pytest

from benchmarks import throughput


def test_tiny_run_times_each_optimizer_and_writes_the_table(tmp_path):
  result = throughput.main(
    [
      "--optimizers",
      "adamw,sinkgd",
      "--batch-size",
      "4",
      "--seq-len",
      "32",
      "--warmup",
      "1",
      "--windows",
      "2",
      "--steps",
      "1",
      "--devices",
      "2",
      "--grad-accum",
      "2",
      "--remat",
      "block",
      "--out",
      str(tmp_path),
    ]
  )
  assert json.loads((tmp_path / "throughput.json").read_text()) == json.loads(
    json.dumps(result)
  )
  assert [r["optimizer"] for r in result["rows"]] == ["adamw", "sinkgd"]
  for r in result["rows"]:
    assert len(r["window_ms"]) == 2
    assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0
    assert r["tokens_per_s"] == pytest.approx(4 * 32 / (r["step_ms"] / 1e3))
    assert r["mfu"] is None  # a CPU has no peak in the table
  table = (tmp_path / "throughput.md").read_text()
  assert "| sinkgd |" in table and "n/a" in table
