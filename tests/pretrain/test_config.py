"""TrainConfig checks itself: bounds, types, choices and per-optimizer flags,
the same whether it is built in code or from the command line."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pretrain import cli
from pretrain.config import DEFAULT_LR, OPTIMIZERS, TrainConfig, field_type
from pretrain.errors import ConfigError, ExitCode

# Every numeric field: values it must refuse and values it must take. The
# completeness test below fails when a numeric field is added without a row.
NUMERIC = {
  "d_model": ([0, -32, 2.5], [32, 128]),
  "lr": ([-1.0, 0.0, math.nan, math.inf], [1e-4, 3]),
  "adam_lr": ([-1.0, 0.0, math.nan, -math.inf], [3e-2]),
  "alpha": ([0.0, -0.05, math.nan], [0.05, 1.0]),
  "num_iters": ([0, -1, 1.5], [1, 5]),
  "momentum": ([1.0, -0.1, math.nan, 2], [0.0, 0.9]),
  "ns_steps": ([0, -3], [1, 6]),
  "weight_decay": ([-0.1, math.nan, math.inf], [0.0, 0.1]),
  "warmup": ([-1, 0.5], [0, 10]),
  "final_lr_fraction": ([-2.0, 1.5, math.nan], [0.0, 0.1, 1.0]),
  "grad_clip": ([-1.0, math.nan, math.inf], [0.0, 1.0]),
  "steps": ([0, -5, 10.0], [1, 600]),
  "batch_size": ([0, -1], [1, 16]),
  "seq_len": ([0], [1, 128]),
  "grad_accum": ([0], [1, 4]),
  "seed": ([-1, 2**32, 2**70, 1.0], [0, 2**32 - 1]),
  "ckpt_every": ([-1], [0, 200]),
  "keep": ([-1], [0, 3]),
  "eval_every": ([-1], [0, 100]),
  "eval_batches": ([-1], [0, 8]),
  "log_every": ([0, -1], [1, 10]),
  "inject_nan_at": ([0, -1], [1, 5]),
  "devices": ([0, -2], [1, 8]),
  "cpu_devices": ([0, -2], [1, 8]),
  "num_processes": ([0, -1], [1, 2]),
  "process_id": ([-1], [0, 1]),
}
# The optimizer each field needs to be accepted (its own flags only).
NEEDS = {
  "adam_lr": "sinkgd",
  "alpha": "sinkgd",
  "num_iters": "sinkgd",
  "momentum": "sinkgd",
  "ns_steps": "swan",
}


def _config(name, value):
  return TrainConfig(optimizer=NEEDS.get(name, "sinkgd"), **{name: value})


def test_every_numeric_field_has_a_row_in_the_table():
  numeric = {
    f.name
    for f in dataclasses.fields(TrainConfig)
    if field_type(f) in (int, float)
  }
  assert numeric == set(NUMERIC)


@pytest.mark.parametrize(
  "name, value",
  [(n, v) for n, (bad, _) in NUMERIC.items() for v in bad],
)
def test_a_value_out_of_bounds_is_one_line_naming_the_flag(name, value):
  with pytest.raises(ConfigError) as e:
    _config(name, value)
  message = str(e.value)
  flag = "--" + name.replace("_", "-")
  assert message.startswith(f"{flag} must be "), message
  assert "\n" not in message
  # The allowed range or type is said, and the value given.
  assert repr(value) in message or "integer" in message, message


@pytest.mark.parametrize(
  "name, value",
  [(n, v) for n, (_, good) in NUMERIC.items() for v in good],
)
def test_a_value_inside_its_bounds_is_kept(name, value):
  assert getattr(_config(name, value), name) == value


@pytest.mark.parametrize(
  "name",
  [
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.metadata["choices"] is not None
  ],
)
def test_a_choice_outside_the_list_is_refused(name):
  with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be"):
    TrainConfig(**{name: "nope"})


def test_unknown_model_is_refused_with_the_choices():
  with pytest.raises(ConfigError, match="unknown model 'nope'; choose one"):
    TrainConfig(model="nope")


@pytest.mark.parametrize(
  "flags, optimizer",
  [
    (dict(warm_start=True), "adamw"),
    (dict(overflow_guard="on_demand"), "swan"),
    (dict(momentum=0.9), "muon"),
    (dict(swan_whiten="exact"), "sinkgd"),
    (dict(ns_steps=3), "sinkgd"),
    (dict(alpha=0.1), "adamw"),
    (dict(adam_lr=1e-3), "sgd"),
    (dict(decay_embeddings=True), "muon"),
    (dict(update_scale="spectral"), "adafactor"),
  ],
)
def test_a_flag_of_another_optimizer_is_refused(flags, optimizer):
  (name,) = flags
  with pytest.raises(ConfigError) as e:
    TrainConfig(optimizer=optimizer, **flags)
  assert str(e.value).startswith(
    f"--{name.replace('_', '-')} does not apply to --optimizer {optimizer}"
  )


def test_lr_defaults_per_optimizer():
  for name in OPTIMIZERS:
    assert TrainConfig(optimizer=name).lr == DEFAULT_LR[name]


def test_replace_checks_again():
  with pytest.raises(ConfigError, match="--steps"):
    dataclasses.replace(TrainConfig(), steps=0)


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--lr", "-1"], "--lr must be greater than 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number greater than 0"),
    (["--final-lr-fraction", "-2"], "--final-lr-fraction must be in [0, 1]"),
    (["--d-model", "0"], "--d-model must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--seed", str(2**64)], "--seed must be in [0, 4294967295]"),
    (["--optimizer", "adamw", "--warm-start"], "--warm-start does not apply"),
  ],
)
def test_cli_refuses_bad_values_before_anything_is_built(
  flags, message, tmp_path, capsys, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  code = cli.main(flags)
  err = capsys.readouterr().err
  assert code == ExitCode.BAD_FLAG
  assert err == f"train.py: error: {err.split('error: ', 1)[1]}"
  assert err.count("\n") == 1 and message in err, err
  assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/
