"""benchmarks/variants.py: every variant is a valid TrainConfig, and its
train.py flag spelling means the same config."""

import dataclasses

import pytest

from benchmarks import variants
from pretrain.cli import parse_args


@pytest.mark.parametrize("name", sorted(variants.VARIANTS))
def test_each_variant_is_a_checked_config_and_its_flags_say_the_same(name):
  v = variants.VARIANTS[name]
  config = variants.config(name)
  for field, value in v.overrides.items():
    assert getattr(config, field) == value
  argv = ["--optimizer", v.optimizer, *variants.legacy_flags(v.overrides)]
  assert dataclasses.asdict(parse_args(argv)) == dataclasses.asdict(config)
  if v.base is not None:
    assert variants.VARIANTS[v.base].optimizer == v.optimizer


def test_fields_on_top_of_a_variant_are_checked_too():
  assert variants.config("sinkgd_l1", lr=0.1).num_iters == 1
  with pytest.raises(Exception, match="does not apply"):
    variants.config("adamw", num_iters=3)
