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
from tests.pretrain.runs import (
  FSDP8,
  SMALL,
  STEPS,
  Run,
  losses,
  read_jsonl,
  run,
  snapshot,
  train_losses,
)


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
  resumed = resume_from_step3(saved, tmp_path / "run", *FSDP8)
  assert resumed["start_step"] == 3
  assert [h["step"] for h in resumed["history"]] == [4, 5, 6]
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
    range(1, STEPS + 1)
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
  resumed = resume_from_step3(saved, tmp_path / "run", *FSDP8, damage=damage)
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
  code = main(SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "0"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "already holds records of an earlier run; pass --resume" in err
  assert metrics.read_text() == before
  # --resume with no checkpoint to resume: step 0 again, the records aside.
  code = main(
    SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "0", "--resume"]
  )
  out = capsys.readouterr().out
  assert code == 0
  aside = tmp_path / "metrics.jsonl.unfinished"
  assert aside.read_text() == before
  assert f"were moved to {aside}" in out
  assert metrics.read_text().count("\n") == STEPS


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
  # expected.json keys train losses by data position, the old convention;
  # records now count completed updates (position + 1).
  assert {str(h["step"] - 1): h["loss"] for h in summary["history"]} == {
    k: v for k, v in expected["train_loss"].items() if int(k) >= 4
  }
  assert summary["final_val_loss"] == expected["val_loss"]["8"]


# ------------------------------------------------------------------ requeue
# A requeue script passes --resume every time: each way a run can end before
# its first checkpoint must continue (from step 0, the records set aside).


@pytest.mark.parametrize("where", ["log=1", "write=2"])
def test_run_killed_before_its_first_checkpoint_requeues_with_resume(
  where, tmp_path, uninterrupted
):
  killed = Run(tmp_path, "--ckpt-every", "2", pauses=where)
  killed.wait_for("paused at")  # after step 1, or during the save of step 2
  killed.proc.kill()
  assert killed.finish() == -9
  # The lock file of the killed run stays; its lock went with the process.
  assert (tmp_path / ".lock").read_text().split()[0] == str(killed.proc.pid)
  earlier = (tmp_path / "metrics.jsonl").read_text()
  assert earlier.count("\n") == int(where[-1])
  requeued = Run(tmp_path, "--ckpt-every", "2", "--resume")
  assert requeued.finish() == 0, "".join(requeued.err)[-2000:]
  out = "".join(requeued.out)
  metrics, aside = (
    tmp_path / "metrics.jsonl",
    tmp_path / "metrics.jsonl.unfinished",
  )
  assert (
    "note: no finished checkpoint to resume from: starting at step 0; the "
    f"earlier records of {metrics} were moved to {aside}\n"
  ) in out
  assert aside.read_text() == earlier
  if where.startswith("write"):
    assert "note: moved unfinished saves" in out
    assert os.listdir(tmp_path / "ckpt.unfinished")
  assert train_losses(tmp_path) == uninterrupted
  assert not (tmp_path / ".lock").exists()


def test_run_that_diverged_before_its_first_checkpoint_requeues_with_resume(
  tmp_path, capsys
):
  # Step 2's loss NaN: the issue's "NaN exit at step 1", counted from 0 then.
  flags = SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "4"]
  assert main(flags + ["--inject-nan-at", "2"]) == 3
  assert (
    "at step 2; stopped. No checkpoint was saved." in capsys.readouterr().err
  )
  earlier = (tmp_path / "metrics.jsonl").read_text()
  assert [r["step"] for r in map(json.loads, earlier.splitlines())] == [1]
  assert main(flags + ["--resume"]) == 0
  assert "were moved to" in capsys.readouterr().out
  assert (tmp_path / "metrics.jsonl.unfinished").read_text() == earlier
  assert complete_steps(tmp_path / "ckpt") == [4, 6]
