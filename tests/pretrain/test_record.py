"""The run record: what it says about a run, and what a resume compares."""

from __future__ import annotations

from pretrain.cli import parse_args
from pretrain.optim import make_optimizer
from pretrain.record import library_defaults


def test_run_record_names_swans_default_whitening_so_a_changed_default_is_noted():
  # A run recorded before the default changed holds None; a resume now records
  # the resolved mode, so Checkpoints notes "swan_whiten None -> fast".
  args = parse_args(["--optimizer", "swan"])
  assert library_defaults(args) == {"swan_whiten": "fast"}
  explicit = parse_args(["--optimizer", "swan", "--swan-whiten", "exact"])
  assert library_defaults(explicit) == {}


def test_run_record_names_each_recipes_overflow_guard():
  # --overflow-guard left unset is the recipe's own default, recorded as such
  # (sinkgd's is the max_abs every run before it had; the stateless recipe's
  # became on_demand, so resuming one of its older runs notes the change).
  sinkgd = parse_args(["--optimizer", "sinkgd"])
  assert library_defaults(sinkgd) == {"overflow_guard": "max_abs"}
  stateless = parse_args(["--optimizer", "sinkgd_stateless"])
  assert library_defaults(stateless) == {"overflow_guard": "on_demand"}
  explicit = ["--optimizer", "sinkgd_stateless", "--overflow-guard", "max_abs"]
  assert library_defaults(parse_args(explicit)) == {}
  # The materialized SR-Sinkhorn has only max_abs: the stateless recipe's
  # default follows --sinkgd-impl, and such a run builds.
  reference = parse_args(
    ["--optimizer", "sinkgd_stateless", "--sinkgd-impl", "reference"]
  )
  assert library_defaults(reference) == {"overflow_guard": "max_abs"}
  make_optimizer(reference)
