"""pretrain/metrics.py: metrics.jsonl, its resume, and TensorBoard scalars."""

import errno
import glob
import json
import os
import struct
import sysconfig

import pytest

from pretrain.cli import parse_args
from pretrain.errors import OutputError
from pretrain.metrics import RunLog, check_metrics_file
from pretrain.trainer import train

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")


def read_scalars(logdir) -> dict:
  """{tag: {step: value}} from the TensorBoard event files in `logdir`.

  Event files are TFRecords: uint64 length, uint32 CRC, the serialized
  `Event` proto (tensorboardX's own definition), uint32 CRC.
  """
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
  scalars = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_tensorboard_holds_the_logged_losses(tmp_path):
  pytest.importorskip("tensorboardX")
  args = parse_args(
    ["--data", DATA, "--steps", "4", "--batch-size", "8", "--seq-len", "32"]
    + ["--eval-every", "2", "--eval-batches", "1", "--log-every", "1"]
    + ["--ckpt-every", "0", "--no-progress", "--tensorboard"]
    + ["--run-dir", str(tmp_path)]
  )
  summary = train(args)
  assert summary["tensorboard"] == str(tmp_path / "tensorboard")
  scalars = read_scalars(summary["tensorboard"])
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  train_records = [r for r in records if r["kind"] == "train"]
  eval_records = [r for r in records if r["kind"] == "eval"]
  assert len(train_records) == 4 and eval_records
  for r in train_records:
    assert scalars["train/loss"][r["step"]] == pytest.approx(r["loss"], 1e-6)
    assert scalars["train/lr"][r["step"]] == pytest.approx(r["lr"], 1e-6)
  for r in eval_records:
    assert scalars["eval/val_loss"][r["step"]] == pytest.approx(
      r["val_loss"], 1e-6
    )


# ------------------------------------------------------------------ the file

TOKENS = 256  # tokens per step of the logs below


def strict_json(line):
  """json.loads that refuses NaN / Infinity, as most JSON readers do."""

  def refuse(name):
    raise ValueError(f"non-standard JSON literal {name}")

  return json.loads(line, parse_constant=refuse)


def read(path):
  with open(path) as f:
    return [strict_json(line) for line in f]


def log(path, start=0, steps=4, **kw):
  return RunLog(
    str(path),
    start=start,
    steps=steps,
    tokens_per_step=TOKENS,
    log_every=1,
    progress=False,
    **kw,
  )


def test_train_eval_and_history_steps_count_completed_updates(tmp_path):
  run = log(tmp_path / "m.jsonl")
  for position in range(4):  # the batches at data positions 0..3
    run.train_step(position, loss=1.0, grad_norm=1.0, lr=0.1)
    if position + 1 in (2, 4):
      run.eval(position + 1, 2.0)
  records = read(tmp_path / "m.jsonl")
  train_records = [r for r in records if r["kind"] == "train"]
  assert [r["step"] for r in train_records] == [1, 2, 3, 4]
  assert all(r["tokens"] == r["step"] * TOKENS for r in train_records)
  assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
  assert [h["step"] for h in run.history] == [1, 2, 3, 4]


def test_numbers_that_are_not_finite_are_written_as_null(tmp_path):
  run = log(tmp_path / "m.jsonl")
  run.train_step(0, loss=float("inf"), grad_norm=float("nan"), lr=0.1)
  run.eval(1, float("nan"))
  train_record, eval_record = read(tmp_path / "m.jsonl")
  assert train_record["loss"] is None and train_record["grad_norm"] is None
  assert eval_record["val_loss"] is None and eval_record["val_ppl"] is None


def _old_record(kind, step, **fields):
  """A record as versions that numbered train records from 0 wrote them."""
  if kind == "train":
    fields["tokens"] = (step + 1) * TOKENS
  return json.dumps({"kind": kind, "step": step, **fields}) + "\n"


def test_resume_renumbers_an_old_file_and_keeps_records_up_to_its_start(
  tmp_path,
):
  path = tmp_path / "m.jsonl"
  lines = [_old_record("train", s, loss=float(s)) for s in range(6)]
  lines.insert(3, _old_record("eval", 3, val_loss=3.5))
  lines.append(_old_record("eval", 6, val_loss=2.5))
  path.write_text("".join(lines).replace("2.5", "NaN"))  # as json.dumps did
  run = log(path, start=3, steps=6)
  records = read(path)
  assert [(r["kind"], r["step"]) for r in records] == [
    ("train", 1),
    ("train", 2),
    ("train", 3),
    ("eval", 3),
  ]
  assert [r["loss"] for r in records if r["kind"] == "train"] == [0, 1, 2]
  assert run.notes == [
    f"6 train record(s) of {path} renumbered to count completed steps "
    "(their step + 1), as this version writes them"
  ]
  run.train_step(3, loss=9.0, grad_norm=1.0, lr=0.1)
  assert read(path)[-1]["step"] == 4


def test_resume_moves_null_mistyped_and_corrupt_lines_aside(tmp_path):
  path = tmp_path / "m.jsonl"
  good = [
    json.dumps({"kind": "train", "step": s, "tokens": s * TOKENS})
    for s in (1, 2)
  ]
  bad = ["null", '{"kind": "train", "step": "2"}', "[1, 2]", '{"kind": "tra']
  path.write_text(
    "\n".join([good[0], bad[0], bad[1], "", bad[2], good[1], bad[3]])
  )  # the last line cut short by a kill
  run = log(path, start=2, steps=4)
  assert [r["step"] for r in read(path)] == [1, 2]
  unreadable = tmp_path / "m.jsonl.unreadable"
  assert unreadable.read_text().splitlines() == bad
  assert run.notes == [
    f"4 unreadable line(s) of {path} (line 2, 3, 5, 7) moved to {unreadable}"
  ]


def test_resume_without_a_checkpoint_moves_the_records_aside(tmp_path):
  path = tmp_path / "m.jsonl"
  earlier = _old_record("train", 0) + "garbage\n"
  path.write_text(earlier)
  with pytest.raises(ValueError, match="pass --resume to continue"):
    check_metrics_file(str(path), start=0, resume=False)
  check_metrics_file(str(path), start=0, resume=True)  # lets it through
  assert path.read_text() == earlier
  run = log(path, start=0)
  assert path.read_text() == ""
  aside = tmp_path / "m.jsonl.unfinished"
  assert aside.read_text() == earlier  # byte for byte
  assert run.notes == [
    "no finished checkpoint to resume from: starting at step 0; the earlier "
    f"records of {path} were moved to {aside}"
  ]
  run.train_step(0, loss=1.0, grad_norm=1.0, lr=0.1)
  second = path.read_text()
  log(path, start=0)  # stopped again before its first save
  assert (tmp_path / "m.jsonl.unfinished.1").read_text() == second
  assert aside.read_text() == earlier


def test_full_disk_while_writing_metrics_is_one_line_and_cuts_no_record(
  tmp_path, monkeypatch
):
  path = tmp_path / "m.jsonl"
  run = log(path)
  run.train_step(0, loss=1.0, grad_norm=1.0, lr=0.1)
  before = path.read_text()
  write = os.write

  def full_disk(fd, data):  # writes a few bytes of the record, then fails
    if os.readlink(f"/proc/self/fd/{fd}") != str(path):
      return write(fd, data)
    if os.fstat(fd).st_size == len(before):
      return write(fd, data[:10])
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "write", full_disk)
  with pytest.raises(OutputError) as e:
    run.train_step(1, loss=1.0, grad_norm=1.0, lr=0.1)
  monkeypatch.undo()
  assert str(e.value) == (
    f"writing metrics to {path} failed at step 2 (No space left on device); "
    "stopped"
  )
  assert path.read_text() == before
