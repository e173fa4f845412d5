"""benchmarks/sweep.py: the run store's keys (the stored results are found
again), the config of a run, and a run's step times."""

import dataclasses
import json

from benchmarks import sweep
from benchmarks.common import RESULTS
from pretrain.cli import parse_args

STORES = ("convergence_cpu", "width_transfer_cpu")


def _stored_runs():
  for store in STORES:
    for path in sorted((RESULTS / store / "runs").glob("*.json")):
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


def test_a_run_s_config_is_train_py_s_of_its_flags(tmp_path):
  sizes = sweep.Sizes("tiny", 7, 4, 16, 0, 1, fields=(("attention", "xla"),))
  point = ("sinkgd_fast", 0.03, 0.01, 2, "stdlib")
  config = sweep.train_config(sizes, *point, str(tmp_path), {"d_model": 64})
  flags = sweep.train_flags(sizes, *point, {"d_model": 64})
  assert flags[-11:-7] == ["--attention", "xla", "--d-model", "64"]
  expected = parse_args([*flags, "--run-dir", str(tmp_path)])
  assert dataclasses.asdict(config) == dataclasses.asdict(expected)


def test_steps_after_an_evaluation_take_the_median_time():
  history = [{"step": s, "time_s": t} for s, t in enumerate([0, 5, 6, 9, 10])]
  assert sweep.step_times(history, 0) == [5, 1, 3, 1]
  # Steps 1 and 3 ran right after the evaluations at 0 and 2.
  assert sweep.step_times(history, 2) == [1, 1, 1, 1]
