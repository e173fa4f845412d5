"""The command line as users type it: python train.py from another directory,
one-line errors, nothing written on bad input.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from pretrain.checkpoint import complete_steps
from pretrain.cli import build_parser, main, parse_args
from pretrain.config import TrainConfig
from tests.pretrain.runs import REPO, SMALL, read_jsonl, snapshot


def test_python_train_py_runs_and_samples_on_relative_paths_from_another_dir(
  tmp_path,
):
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "train.py"),
      "--steps",
      "4",
      "--batch-size",
      "8",
      "--seq-len",
      "32",
      "--eval-every",
      "2",
      "--eval-batches",
      "1",
      "--ckpt-every",
      "2",
      "--keep",
      "1",
      "--log-every",
      "1",
      "--run-dir",
      "run",  # relative to the working directory, which is not the repo
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "done: 4 steps" in proc.stdout and "val loss" in proc.stdout
  records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  train_steps = [r["step"] for r in records if r["kind"] == "train"]
  assert train_steps == [1, 2, 3, 4]
  assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
  assert all(
    np.isfinite(r["loss"]) and r["tokens_per_s"] > 0
    for r in records
    if r["kind"] == "train"
  )
  # A CPU's peak FLOP/s and memory are unknown: MFU and peak memory are null
  # (and the closing line says n/a); tokens/s per device is there.
  last = [r for r in records if r["kind"] == "train"][-1]
  assert last["mfu"] is None and last["peak_memory_bytes"] is None
  assert last["tokens_per_s_per_device"] > 0
  assert "per device, MFU n/a)" in proc.stdout
  assert complete_steps(tmp_path / "run" / "ckpt") == [4]  # --keep 1
  # The README's sample command, on the relative run dir, from that directory.
  sample = subprocess.run(
    [sys.executable, "-m", "pretrain.sample", "--run-dir", "run"]
    + ["--prompt", "def ", "--max-new-tokens", "8", "--num-samples", "1"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert sample.returncode == 0, sample.stderr[-2000:]
  assert "--- greedy ---" in sample.stdout


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("texts")
  (tmp / "short.txt").write_text("hello world\n" * 3)
  (tmp / "empty.txt").write_text("")
  (tmp / "nothing").mkdir()
  return tmp


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--optimizer", "nope"], "invalid choice: 'nope'"),
    (["--mesh", "data=two"], "size must be an integer"),
    (["--mesh", "data=2,fsdp=2,tensor=1"], "holds 4 devices but 8 are in use"),
    (["--mesh", "data=3"], "do not divide the 8 devices"),
    (
      # A fresh --ckpt-dir: resuming fsdp8's run with another batch is refused.
      ["--mesh", "fsdp=8", "--batch-size", "4", "--ckpt-dir", "{texts}/new"],
      "does not divide over data x fsdp = 8",
    ),
    (["--data", "{texts}/missing.txt"], "data not found"),
    (["--data", "{texts}/empty.txt"], "is empty"),
    (["--data", "{texts}/nothing"], "has no text files"),
    (["--seq-len", "100000"], "longer than model tiny's context of 256 tokens"),
    (
      ["--data", "{texts}/short.txt", "--seq-len", "64"]
      + ["--ckpt-dir", "{texts}/new"],
      "longer than the training data",
    ),
    (["--model", "60m"], "holds a run with a different model"),
    ([], "already holds checkpoints up to step 6; pass --resume"),
  ],
)
def test_bad_input_is_one_line_error_and_leaves_checkpoints(
  flags, message, fsdp8, tiny_text, capsys
):
  ckpt = fsdp8[1] / "ckpt"
  before = snapshot(ckpt)
  flags = [f.format(texts=tiny_text) for f in flags]
  if "already holds" not in message:
    # --resume: past the bad input, the run would go on and write to the checkpoints.
    flags.append("--resume")
  code = main(SMALL + ["--ckpt-dir", str(ckpt), "--metrics", "none"] + flags)
  err = capsys.readouterr().err
  assert code != 0
  assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
  assert message in err
  assert snapshot(ckpt) == before


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--ckpt-dir", "{file}"], "is a file, not a directory"),
    (["--ckpt-dir", "{file}/ckpt"], "is a file, not a directory"),
    (["--run-dir", "{file}"], "is a file, not a directory"),
    (["--metrics", "{dir}"], "is a directory, not a file"),
    (["--metrics", "{file}/m.jsonl"], "is a file, not a directory"),
    (["--cpu-devices", "0"], "--cpu-devices must be at least 1"),
    (["--cpu-devices", "-2"], "--cpu-devices must be at least 1"),
    (["--devices", "0"], "--devices must be at least 1"),
    (["--tokenizer", "{tok_json}"], "needs the 'tokenizers' package"),
    (["--tokenizer", "{tok_model}"], "needs the 'sentencepiece' package"),
    (["--data", "{dir}/x.bin:uint64"], "unsupported token dtype uint64"),
  ],
)
def test_bad_output_paths_and_flags_are_one_line_errors_and_write_nothing(
  flags, message, tmp_path, capsys, monkeypatch
):
  # As if the optional [hf] extra were not installed.
  monkeypatch.setitem(sys.modules, "tokenizers", None)
  monkeypatch.setitem(sys.modules, "sentencepiece", None)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "afile").write_text("not a directory")
  (tmp_path / "adir").mkdir()
  (tmp_path / "tok.json").write_text("{}")
  (tmp_path / "tok.model").write_text("")
  (tmp_path / "adir" / "x.bin").write_bytes(bytes(64))
  names = dict(
    file=tmp_path / "afile",
    dir=tmp_path / "adir",
    tok_json=tmp_path / "tok.json",
    tok_model=tmp_path / "tok.model",
  )
  flags = [f.format(**names) for f in flags]
  if "--run-dir" not in flags:
    flags += ["--run-dir", str(tmp_path / "run")]
  before = snapshot(tmp_path)
  code = main(SMALL + ["--ckpt-every", "2"] + flags)
  err = capsys.readouterr().err
  assert code in (1, 2)
  assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
  assert message in err
  assert snapshot(tmp_path) == before
  assert sorted(os.listdir(tmp_path)) == sorted(
    ["afile", "adir", "tok.json", "tok.model"]
  )


def test_read_only_checkpoint_dir_is_refused_before_training(
  tmp_path, capsys, monkeypatch
):
  import errno
  import tempfile

  def read_only_mount(*a, **k):  # what a read-only file system answers
    raise OSError(errno.EROFS, "Read-only file system")

  (tmp_path / "ckpt").mkdir()
  monkeypatch.setattr(tempfile, "TemporaryFile", read_only_mount)
  code = main(SMALL + ["--run-dir", str(tmp_path), "--metrics", "none"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "--ckpt-dir" in err and "Read-only file system" in err
  assert os.listdir(tmp_path / "ckpt") == []


@pytest.mark.skipif(
  hasattr(os, "geteuid") and os.geteuid() == 0,
  reason="root bypasses file permissions: a chmod 555 directory stays "
  "writable (the read-only mount case is tested by fault injection)",
)
def test_checkpoint_dir_without_write_permission_is_refused(tmp_path, capsys):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  ckpt.chmod(0o555)
  try:
    code = main(SMALL + ["--run-dir", str(tmp_path), "--metrics", "none"])
  finally:
    ckpt.chmod(0o755)
  err = capsys.readouterr().err
  assert code == 1 and "is not writable" in err and err.count("\n") == 1


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--momentum", "1.0"], "--momentum must be in [0, 1)"),
    (["--overflow-guard", "fast"], "argument --overflow-guard"),
    (["--momentum-order", "x"], "argument --momentum-order"),
  ],
)
def test_bad_sinkgd_option_is_one_line_error(flags, message, capsys):
  assert main(SMALL + flags) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err


def test_the_parser_is_the_config_one_flag_per_field_in_its_group(
  monkeypatch,
):
  for name in (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
  ):
    monkeypatch.delenv(name, raising=False)
  parser = build_parser()
  flags = {
    a.dest: group.title
    for group in parser._action_groups
    for a in group._group_actions
    if a.dest != "help"
  }
  fields = dataclasses.fields(TrainConfig)
  assert flags == {f.name: f.metadata["group"] for f in fields}
  assert parse_args([]) == TrainConfig()
  # Multi-process settings also come from JAX's environment variables.
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert (parse_args([]).num_processes, parse_args([]).process_id) == (2, 1)
