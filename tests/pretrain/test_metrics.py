"""pretrain/metrics.py: TensorBoard scalars next to metrics.jsonl."""

import glob
import json
import os
import struct
import sysconfig

import pytest

from pretrain.cli import parse_args
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
