"""Resuming: bitwise equal to an uninterrupted run, across meshes, refusing
another run's checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from pretrain.checkpoint import complete_steps
from pretrain.cli import main, parse_args
from pretrain.trainer import train
from tests.pretrain.runs import SMALL, STEPS, losses, read_jsonl, run, snapshot


@pytest.fixture(scope="module")
def fsdp4_tensor2(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fsdp4_tensor2")
  return run(
    tmp, "--mesh", "fsdp=4,tensor=2", "--ckpt-every", "3", "--keep", "0"
  ), tmp


def resume_from_step3(saved_tmp, new_tmp, *flags, damage=None):
  """Copies a run dir and resumes it after step 3's save: its last checkpoint
  dropped (as if killed during it, leaving orbax's temporary directory), or
  kept but damaged in place by `damage(step_dir)`. A folder of the user's,
  `ckpt/5/`, sits among the checkpoints."""
  shutil.copytree(saved_tmp, new_tmp)
  ckpt = os.path.join(new_tmp, "ckpt")
  if damage is None:
    shutil.rmtree(os.path.join(ckpt, str(STEPS)))
    os.makedirs(
      os.path.join(ckpt, f"{STEPS}.orbax-checkpoint-tmp-1234", "state")
    )
  else:
    damage(os.path.join(ckpt, str(STEPS)))
  os.makedirs(os.path.join(ckpt, "5", "notes"))
  return run(new_tmp, "--ckpt-every", "3", "--keep", "0", "--resume", *flags)


def test_scanned_run_trains_and_its_checkpoint_is_refused_unrolled(
  tmp_path, capsys
):
  summary = run(
    tmp_path, "--scan-layers", "--remat", "block", "--ckpt-every", "6"
  )
  assert losses(summary)[-1] < losses(summary)[0] - 1.0
  code = main(SMALL + ["--run-dir", str(tmp_path), "--resume", "--steps", "8"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert (
    "holds a run with a different layout (scanned layers (--scan-layers), "
    "not unrolled layers)" in err
  )


def test_stateless_recipe_trains_resumes_bitwise_and_refuses_another_rule(
  tmp_path, capsys
):
  flags = ("--optimizer", "sinkgd_stateless", "--devices", "1")
  saved = tmp_path / "saved"
  whole = run(saved, *flags, "--ckpt-every", "3", "--keep", "0")
  assert losses(whole)[-1] < losses(whole)[0] - 1.0
  resumed = resume_from_step3(saved, tmp_path / "run", *flags)
  assert resumed["start_step"] == 3
  np.testing.assert_array_equal(losses(resumed), losses(whole)[3:])
  # Another update-scale rule is another optimizer state: refused, one line.
  code = main(
    SMALL
    + ["--run-dir", str(saved), "--resume", "--steps", "8", *flags]
    + ["--update-scale", "spectral"]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "different optimizer" in err and "spectral" in err, err


def test_resume_after_interruption_is_bitwise_identical(fsdp8, tmp_path):
  uninterrupted, saved = fsdp8
  resumed = resume_from_step3(
    saved,
    tmp_path / "run",
    "--mesh",
    "fsdp=8",
    "--eval-batches",
    "1",
    "--eval-every",
    "3",
  )
  assert resumed["start_step"] == 3
  assert [h["step"] for h in resumed["history"]] == [3, 4, 5]
  np.testing.assert_array_equal(losses(resumed), losses(uninterrupted)[3:])
  assert resumed["final_val_loss"] == uninterrupted["final_val_loss"]
  # The unfinished save was moved aside (never deleted), the user's folder left
  # alone; the run saved its own last step.
  ckpt = tmp_path / "run" / "ckpt"
  assert sorted(os.listdir(ckpt)) == ["3", "5", "6"]
  assert complete_steps(ckpt) == [3, 6]
  assert os.listdir(ckpt / "5") == ["notes"]
  assert os.listdir(tmp_path / "run" / "ckpt.unfinished") == [
    f"{STEPS}.orbax-checkpoint-tmp-1234"
  ]
  # The metrics file reads as one run: steps 3..5 replayed, not duplicated.
  records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in records if r["kind"] == "train"] == list(
    range(STEPS)
  )
  assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]


def _largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


def _overwrite_8_bytes(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x00\x11\x22\x33\x44\x55\x66\x77")


def _truncate(step_dir):
  path = _largest_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_overwrite_8_bytes, _truncate])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_before_it(
  fsdp8, tmp_path, damage, capsys
):
  uninterrupted, saved = fsdp8
  resumed = resume_from_step3(
    saved,
    tmp_path / "run",
    "--mesh",
    "fsdp=8",
    "--eval-batches",
    "1",
    "--eval-every",
    "3",
    damage=damage,
  )
  out = capsys.readouterr().out
  assert resumed["start_step"] == 3
  np.testing.assert_array_equal(losses(resumed), losses(uninterrupted)[3:])
  (note,) = [line for line in out.splitlines() if "is damaged" in line]
  assert note.startswith(f"note: checkpoint step {STEPS} is damaged"), note
  assert "ckpt.damaged" in note
  # Set aside whole, never deleted; the run saved a sound step 6 again.
  ckpt = tmp_path / "run" / "ckpt"
  assert complete_steps(ckpt) == [3, 6]
  assert os.listdir(tmp_path / "run" / "ckpt.damaged") == [str(STEPS)]


def test_checkpoint_restores_onto_a_different_mesh(fsdp4_tensor2, tmp_path):
  saved_summary, saved = fsdp4_tensor2
  resumed = resume_from_step3(
    saved, tmp_path / "run", "--mesh", "fsdp=2,tensor=4"
  )
  assert resumed["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
  np.testing.assert_allclose(
    losses(resumed), losses(saved_summary)[3:], rtol=1e-5, atol=1e-5
  )


def test_metrics_of_an_earlier_run_are_never_truncated(tmp_path, capsys):
  run(tmp_path, "--ckpt-every", "0")
  metrics = tmp_path / "metrics.jsonl"
  before = metrics.read_text()
  assert before.count("\n") == STEPS
  for flags in (["--ckpt-every", "0"], ["--ckpt-every", "0", "--resume"]):
    code = main(SMALL + ["--run-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "already holds records of an earlier run" in err
    assert metrics.read_text() == before


@pytest.mark.parametrize(
  "flag, value", [("--batch-size", "16"), ("--seq-len", "64")]
)
def test_resume_with_other_data_windows_is_refused(flag, value, fsdp8, capsys):
  ckpt = fsdp8[1] / "ckpt"
  before = snapshot(ckpt)
  code = main(
    SMALL
    + ["--ckpt-dir", str(ckpt), "--metrics", "none", "--resume"]
    + ["--steps", "12", flag, value]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert flag in err and "repeat or skip" in err
  assert snapshot(ckpt) == before


SINKGD_OPTIONS = [
  "--num-iters",
  "1",
  "--warm-start",
  "--overflow-guard",
  "on_demand",
  "--momentum",
  "0.9",
  "--nesterov",
]


@pytest.fixture(scope="module")
def sinkgd_options_sharded(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sinkgd_options")
  flags = ["--mesh", "fsdp=4,tensor=2", "--ckpt-every", "3", "--keep", "0"]
  return run(tmp, *flags, *SINKGD_OPTIONS), tmp


def test_sinkgd_options_train_on_a_mesh_and_resume_bitwise(
  sinkgd_options_sharded, tmp_path
):
  summary, saved = sinkgd_options_sharded
  assert losses(summary)[-1] < losses(summary)[0] - 1.0
  resumed = resume_from_step3(
    saved, tmp_path / "run", "--mesh", "fsdp=4,tensor=2", *SINKGD_OPTIONS
  )
  assert resumed["start_step"] == 3
  np.testing.assert_array_equal(losses(resumed), losses(summary)[3:])


def test_resume_without_the_flags_that_shape_the_state_is_refused(
  sinkgd_options_sharded, capsys
):
  ckpt = sinkgd_options_sharded[1] / "ckpt"
  before = snapshot(ckpt)
  code = main(
    SMALL
    + ["--ckpt-dir", str(ckpt), "--metrics", "none", "--resume"]
    + ["--mesh", "fsdp=4,tensor=2", "--momentum", "0.9"]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "holds a run with a different optimizer" in err
  assert "(sinkgd, warm_start True, not sinkgd, warm_start unset)" in err
  assert snapshot(ckpt) == before


# Written by train.py before the pretrain/ redesign (see its expected.json).
PRE_REDESIGN = os.path.join(os.path.dirname(__file__), "data", "pre_redesign")


def test_a_checkpoint_written_before_the_redesign_resumes_bitwise(tmp_path):
  with open(os.path.join(PRE_REDESIGN, "expected.json")) as f:
    expected = json.load(f)
  shutil.copytree(os.path.join(PRE_REDESIGN, "ckpt"), tmp_path / "ckpt")
  flags = ["--d-model", "32", "--steps", "8", "--batch-size", "4"]
  flags += ["--seq-len", "32", "--ckpt-every", "4", "--log-every", "1"]
  flags += ["--eval-every", "4", "--eval-batches", "2", "--devices", "1"]
  config = parse_args(
    flags + ["--run-dir", str(tmp_path), "--resume", "--no-progress"]
  )
  summary = train(config)
  assert summary["start_step"] == 4
  assert {str(h["step"]): h["loss"] for h in summary["history"]} == {
    k: v for k, v in expected["train_loss"].items() if int(k) >= 4
  }
  assert summary["final_val_loss"] == expected["val_loss"]["8"]
