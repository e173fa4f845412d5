"""benchmarks/sweep.py: the run store's keys (the stored results are found
again), the config of a run, and a run's step times."""

import dataclasses
import json

import pytest

from benchmarks import common, sweep
from pretrain.cli import parse_args

STORES = ("convergence_cpu", "width_transfer_cpu")


def _stored_runs():
  for store in STORES:
    for path in sorted((common.RESULTS / store / "runs").glob("*.json")):
      yield store, path


def _point(record: dict, argv: list[str]):
  """The sweep's Sizes and the run's extra fields, read off its flags."""
  value = dict(zip(argv, argv[1:]))
  sizes = sweep.Sizes(
    model=value["--model"],
    steps=int(value["--steps"]),
    batch_size=int(value["--batch-size"]),
    seq_len=int(value["--seq-len"]),
    eval_every=int(value["--eval-every"]),
    eval_batches=int(value["--eval-batches"]),
    alpha=float(value["--alpha"]),
    grad_clip=float(value["--grad-clip"]),
    tokenizer=value.get("--tokenizer"),
  )
  extra = {"d_model": int(value["--d-model"])} if "--d-model" in value else {}
  return sizes, extra


def test_every_stored_run_is_found_under_its_key():
  """The store's key shim: runs stored when variants were flag tuples hash to
  the same file name from the variant's TrainConfig overrides."""
  paths = list(_stored_runs())
  assert len(paths) > 100
  for _, path in paths:
    record = json.loads(path.read_text())
    argv = record["train_argv"]
    i = argv.index("--run-dir") if "--run-dir" in argv else None
    kept = argv if i is None else argv[:i] + argv[i + 2 :]
    sizes, extra = _point(record, kept)
    point = (record["variant"], record["lr"], record["adam_lr"])
    flags = sweep.train_flags(
      sizes, *point, record["seed"], record["corpus"], extra
    )
    assert flags == kept, path.name
    assert path.name == f"{record['variant']}-{sweep.run_key(flags)}.json"


TINY = sweep.Sizes("tiny", 7, 4, 16, 0, 1)
XLA = dataclasses.replace(TINY, fields=(("attention", "xla"),))
BYTE_60M = sweep.Sizes(
  model="60m",
  steps=300,
  batch_size=16,
  seq_len=128,
  eval_every=50,
  eval_batches=4,
  alpha=0.1,
  grad_clip=0.5,
  tokenizer="byte",
  fields=(("dtype", "bfloat16"), ("scan_layers", True)),
)


@pytest.mark.parametrize(
  "sizes, point, extra, key",
  [
    (TINY, ("adamw", 0.03, None, 2, "stdlib"), None, "92379acf0729c46d"),
    (
      XLA,
      ("sinkgd_warm_l1", 0.03, 0.01, 2, "stdlib"),
      None,
      "af4530be3c6403d6",
    ),
    (
      TINY,
      ("sinkgd_fast", 0.03, 0.01, 2, "stdlib"),
      {"d_model": 64},
      "fdd6a98fc5259dab",
    ),
    (
      BYTE_60M,
      ("swan_fast3", 0.03, 0.01, 2, "stdlib"),
      {"d_model": 64},
      "d6abdd40b89f2e6e",
    ),
    # Two stored runs, as their sweeps ran them.
    (
      sweep.Sizes("tiny", 100, 8, 64, 0, 8),
      ("adamw2", 1e-4, 0.03, 0, "stdlib"),
      {"d_model": 256},
      "02f51e367237aad1",
    ),
    (
      sweep.Sizes("tiny", 200, 16, 64, 20, 8),
      ("sinkgd", 0.01, 0.03, 0, "stdlib"),
      None,
      "0e1ef845726fb151",
    ),
  ],
)
def test_a_run_s_key_is_pinned(sizes, point, extra, key):
  """Keys computed before train_config was derived from train_flags: a change
  to the flag line would lose every stored run."""
  assert sweep.run_key(sweep.train_flags(sizes, *point, extra)) == key


def test_a_run_s_config_has_its_point_sizes_and_extra_fields(tmp_path):
  sizes = dataclasses.replace(BYTE_60M, alpha=0.05)
  point = ("sinkgd_fast", 0.03, 0.01, 2, "jaxstack")
  config = sweep.train_config(sizes, *point, str(tmp_path), {"d_model": 64})
  expected = {
    # the variant's overrides
    "optimizer": "sinkgd",
    "warm_start": True,
    "num_iters": 1,
    "overflow_guard": "on_demand",
    # the point
    "lr": 0.03,
    "adam_lr": 0.01,
    "seed": 2,
    "data": "jaxstack",
    # the sizes, their fields and the run's extra
    "model": "60m",
    "steps": 300,
    "batch_size": 16,
    "seq_len": 128,
    "eval_every": 50,
    "eval_batches": 4,
    "alpha": 0.05,
    "grad_clip": 0.5,
    "tokenizer": "byte",
    "dtype": "bfloat16",
    "scan_layers": True,
    "d_model": 64,
    # a sweep's run keeps nothing but its summary
    "run_dir": str(tmp_path),
    "ckpt_every": 0,
    "metrics": "none",
    "log_every": 300,
    "no_progress": True,
  }
  assert {k: getattr(config, k) for k in expected} == expected
  # Every other field is train.py's default.
  default = parse_args([])
  others = [
    f.name for f in dataclasses.fields(config) if f.name not in expected
  ]
  assert others
  assert {k: getattr(config, k) for k in others} == {
    k: getattr(default, k) for k in others
  }


def test_a_bad_point_is_refused_as_train_py_refuses_its_flags(capsys):
  point = ("sgd", 0.03, 0.01, 0, "stdlib")  # sgd has no AdamW group
  with pytest.raises(SystemExit):
    sweep.train_config(TINY, *point, "RUN")
  assert "--adam-lr does not apply" in capsys.readouterr().err


def test_steps_after_an_evaluation_take_the_median_time():
  history = [{"step": s, "time_s": t} for s, t in enumerate([0, 5, 6, 9, 10])]
  assert sweep.step_times(history, 0) == [5, 1, 3, 1]
  # Steps 1 and 3 ran right after the evaluations at 0 and 2.
  assert sweep.step_times(history, 2) == [1, 1, 1, 1]
