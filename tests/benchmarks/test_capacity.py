"""benchmarks/capacity.py on the tiny model: compile-only, rows and table."""

import json

import pytest

from benchmarks import capacity


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  out = tmp_path_factory.mktemp("capacity")
  rows = capacity.main(
    [
      "--models",
      "tiny",
      "--optimizers",
      "adamw,sinkgd",
      "--batch-per-device",
      "2",
      "--seq-len",
      "64",
      "--devices",
      "2",
      "--memory-gib",
      "1",
      "--out",
      str(out),
    ]
  )
  return rows, out


def test_rows_have_the_documented_keys_and_per_device_sizes(result):
  rows, out = result
  assert json.loads((out / "capacity.json").read_text()) == json.loads(
    json.dumps(rows)
  )
  by_opt = {r["optimizer"]: r for r in rows}
  assert set(by_opt) == {"adamw", "sinkgd"}
  for r in rows:
    for key in ("model", "optimizer", "devices", "param_bytes"):
      assert key in r
    assert r["devices"] == 2 and r["mesh"] == "data=1,fsdp=2,tensor=1"
    # fsdp=2 halves every d_model-sharded parameter: ~half the float32 bytes.
    total = 4 * r["params"]
    assert 0.45 * total < r["param_bytes"] < 0.55 * total
    assert r["peak_bytes"] > r["param_bytes"] + r["opt_state_bytes"]
    # Activations grow with the batch.
    assert r["peak_bytes_2x_batch"] > r["peak_bytes"]
    assert r["max_batch_per_device"] >= 2
  # AdamW keeps two moments of every parameter; SinkGD none for matrices.
  adamw, sinkgd = by_opt["adamw"], by_opt["sinkgd"]
  assert adamw["opt_state_bytes"] >= 2 * adamw["param_bytes"]
  assert sinkgd["opt_state_bytes"] < 0.7 * adamw["opt_state_bytes"]
  assert sinkgd["peak_bytes"] < adamw["peak_bytes"]
  table = (out / "capacity.md").read_text()
  assert "| tiny | adamw |" in table and "| sinkgd | tiny |" in table
