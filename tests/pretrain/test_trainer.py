"""The loop: sharded and multi-process runs match one device, divergence and
failed saves stop it with one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from models import llama
from pretrain.checkpoint import complete_steps
from pretrain.cli import main
from pretrain.errors import ExitCode
from tests.pretrain.runs import REPO, SMALL, STEPS, losses, read_jsonl, run


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  return run(
    tmp_path_factory.mktemp("one"), "--devices", "1", "--ckpt-every", "0"
  )


def test_mesh_that_does_not_divide_a_dimension_trains_with_it_replicated(
  tmp_path, capsys, monkeypatch
):
  """The one divisibility rule end to end: tiny with d_ff = 100 on tensor=8
  trains (d_ff whole on every device) and says so on one note line."""
  monkeypatch.setitem(
    llama.CONFIGS, "tiny_d100", llama.get_config("tiny", d_ff=100)
  )
  code = main(
    SMALL[:2]
    + ["--steps", "2", "--batch-size", "8", "--seq-len", "16"]
    + ["--mesh", "tensor=8", "--ckpt-every", "0", "--metrics", "none"]
    + ["--no-progress", "--run-dir", str(tmp_path), "--model", "tiny_d100"]
  )
  out = capsys.readouterr()
  assert code == 0, out.err
  assert "note: a dimension of 100 does not divide over tensor = 8" in out.out


@pytest.mark.parametrize(
  "name", ["fsdp8", "data2_fsdp2_tensor2", "fsdp2_grad_accum2"]
)
def test_sharded_run_matches_single_device(
  name, single_device, fsdp8, tmp_path
):
  if name == "fsdp8":
    sharded = fsdp8[0]
  elif name == "fsdp2_grad_accum2":
    sharded = run(
      tmp_path, "--devices", "2", "--grad-accum", "2", "--ckpt-every", "0"
    )
  else:
    sharded = run(
      tmp_path, "--mesh", "data=2,fsdp=2,tensor=2", "--ckpt-every", "0"
    )
  assert sharded["mesh"] != single_device["mesh"]
  np.testing.assert_allclose(
    losses(sharded), losses(single_device), rtol=1e-5, atol=1e-5
  )
  assert losses(single_device)[-1] < losses(single_device)[0] - 1.0


def test_training_reduces_validation_loss(fsdp8):
  summary, tmp = fsdp8
  assert [e["step"] for e in summary["evals"]] == [3, 6]
  assert summary["final_val_loss"] < np.log(256) - 1.0
  assert summary["final_val_ppl"] == pytest.approx(
    np.exp(summary["final_val_loss"])
  )


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
  flags = SMALL + ["--mesh", "data=2,fsdp=2", "--ckpt-every", "3"]
  address = f"127.0.0.1:{_free_port()}"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(REPO, "train.py"),
        *flags,
        "--cpu-devices",
        "2",
        "--run-dir",
        str(tmp_path / "multi"),
        "--coordinator",
        address,
        "--num-processes",
        "2",
        "--process-id",
        str(i),
      ],
      cwd=tmp_path,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  reference = run(
    tmp_path / "single",
    "--devices",
    "4",
    "--mesh",
    "data=2,fsdp=2",
    "--ckpt-every",
    "0",
  )
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  # Only process 0 reports (gloo prints its own connection notices from every process).
  assert "model tiny" in outputs[0][0] and "done:" in outputs[0][0]
  assert "model tiny" not in outputs[1][0] and "done:" not in outputs[1][0]
  records = read_jsonl(tmp_path / "multi" / "metrics.jsonl")
  assert [r["step"] for r in records if r["kind"] == "train"] == list(
    range(1, STEPS + 1)
  )
  multi = np.array([r["loss"] for r in records if r["kind"] == "train"])
  np.testing.assert_allclose(multi, losses(reference), rtol=1e-5, atol=1e-5)
  assert complete_steps(tmp_path / "multi" / "ckpt") == [3, 6]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
  tmp_path, capsys
):
  code = main(
    SMALL
    + [
      "--run-dir",
      str(tmp_path),
      "--ckpt-every",
      "2",
      "--inject-nan-at",
      "5",
      "--optimizer",
      "sgd",
    ]
  )
  err = capsys.readouterr().err
  assert code == 3
  assert err.count("\n") == 1 and "loss is nan" in err and "at step 5" in err
  assert f"Last good checkpoint: {tmp_path / 'ckpt' / '4'}" in err
  assert complete_steps(tmp_path / "ckpt") == [2, 4]
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2", "4"]


FAIL_BACKGROUND_SAVE = """
import errno, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as h
save_fn = h.JsonCheckpointHandler._save_fn
async def failing(self, x, directory):
  if directory.parent.name.startswith("4."):  # the temporary dir of step 4
    raise OSError(errno.ENOSPC, "No space left on device")
  return await save_fn(self, x, directory)
h.JsonCheckpointHandler._save_fn = failing
import runpy
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.parametrize("steps", ["4", "6"])
def test_failed_background_save_stops_the_run_with_one_line(tmp_path, steps):
  # steps 4: the failure surfaces when the run closes; 6: at the next save.
  flags = SMALL + ["--steps", steps, "--ckpt-every", "2", "--keep", "0"]
  proc = subprocess.run(
    [sys.executable, "-c", FAIL_BACKGROUND_SAVE, *flags]
    + ["--run-dir", str(tmp_path / "run")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=240,  # before the fix, the process never exited
  )
  assert proc.returncode == ExitCode.SAVE_FAILED, proc.stderr[-3000:]
  # Our one line comes last; orbax's own account of the failure (hundreds of
  # lines of tracebacks) went to the file that line names.
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: error: saving checkpoint step 4"), last
  assert "No space left on device" in last
  orbax_log = tmp_path / "run" / "ckpt" / "orbax.log"
  good = tmp_path / "run" / "ckpt" / "2"
  assert last.endswith(
    f"last good checkpoint: {good} (orbax's log: {orbax_log})"
  ), last
  assert "Traceback" in orbax_log.read_text()
  assert "Traceback" not in proc.stderr and "absl" not in proc.stderr
  assert proc.stderr.count("train.py: error:") == 1
  assert complete_steps(tmp_path / "run" / "ckpt") == [2]


def test_save_that_raises_stops_the_run_and_keeps_earlier_checkpoints(
  tmp_path, capsys, monkeypatch
):
  import orbax.checkpoint as ocp

  save = ocp.CheckpointManager.save

  def failing(self, step, *a, **k):
    if step == 4:
      raise PermissionError(13, "Permission denied", "ckpt/4")
    return save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
  code = main(
    SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "2", "--keep", "0"]
  )
  err = capsys.readouterr().err
  assert code == ExitCode.SAVE_FAILED
  assert err.count("\n") == 1 and "saving checkpoint step 4" in err, err
  assert "Permission denied" in err
  assert complete_steps(tmp_path / "ckpt") == [2]
