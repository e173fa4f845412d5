"""Every optimizer variant a benchmark compares, as `TrainConfig` overrides.

One table for all benchmarks: step_cost times `config(name)`'s optimizer,
throughput its train step, convergence and width_transfer train it. A variant
is the fields that differ from `TrainConfig`'s defaults; `two_groups` says a
sweep tunes `adam_lr` too, `base` that it is an ablation, run at its base
variant's tuned point instead of being tuned itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pretrain.config import TrainConfig, flag_name


@dataclasses.dataclass(frozen=True)
class Variant:
  """An optimizer as a benchmark runs it: `TrainConfig` overrides."""

  overrides: dict[str, Any]
  two_groups: bool = False
  base: str | None = None

  @property
  def optimizer(self) -> str:
    return self.overrides.get("optimizer", TrainConfig.optimizer)


def _v(optimizer: str, **overrides) -> dict:
  return {"optimizer": optimizer, **overrides}


_SINKGD, _SWAN = {"base": "sinkgd"}, {"base": "swan"}
_TWO = {"two_groups": True}

VARIANTS: dict[str, Variant] = {
  "sgd": Variant(_v("sgd")),
  "adamw": Variant(_v("adamw")),
  # AdamW with the recipes' two groups: hidden matrices at lr, the rest at
  # adam_lr.
  "adamw2": Variant(_v("adamw"), **_TWO),
  "adafactor": Variant(_v("adafactor")),
  # optax.contrib.muon has its own AdamW group: tuned in 2-D like the rest.
  "muon": Variant(_v("muon"), **_TWO),
  "sinkgd": Variant(_v("sinkgd"), **_TWO),
  "swan": Variant(_v("swan"), **_TWO),
  "sinkgd_l1": Variant(_v("sinkgd", num_iters=1), **_SINKGD),
  "sinkgd_l2": Variant(_v("sinkgd", num_iters=2), **_SINKGD),
  "sinkgd_l5": Variant(_v("sinkgd", num_iters=5), **_SINKGD),
  "sinkgd_reference": Variant(_v("sinkgd", sinkgd_impl="reference"), **_SINKGD),
  "sinkgd_l5_reference": Variant(
    _v("sinkgd", num_iters=5, sinkgd_impl="reference"), **_SINKGD
  ),
  "sinkgd_l5_spectral": Variant(
    _v("sinkgd", num_iters=5, update_scale="spectral"), **_SINKGD
  ),
  # The cheaper-step options of SR-Sinkhorn: warm-started L=1, no separate
  # max|G| read, and both at once (the step that costs less than AdamW's).
  "sinkgd_warm_l1": Variant(
    _v("sinkgd", num_iters=1, warm_start=True), **_SINKGD
  ),
  "sinkgd_guard": Variant(_v("sinkgd", overflow_guard="on_demand"), **_SINKGD),
  "sinkgd_fast": Variant(
    _v("sinkgd", warm_start=True, num_iters=1, overflow_guard="on_demand"),
    **_SINKGD,
  ),
  # Momentum changes the effective step: tuned like sinkgd.
  "sinkgd_mom": Variant(_v("sinkgd", momentum=0.9), **_TWO),
  "sinkgd_mom_post": Variant(
    _v("sinkgd", momentum=0.9, momentum_order="average_then_normalize"),
    **_TWO,
  ),
  # SWAN's whitening (default: the 4-step fast schedule): 3 steps, and the
  # other modes (exact; newton_schulz, the default before the modes).
  "swan_fast": Variant(_v("swan", swan_whiten="fast"), **_SWAN),
  "swan_ns3": Variant(_v("swan", ns_steps=3), **_SWAN),
  "swan_fast3": Variant(_v("swan", swan_whiten="fast", ns_steps=3), **_SWAN),
  "swan_exact": Variant(_v("swan", swan_whiten="exact"), **_SWAN),
  "swan_newton_schulz": Variant(
    _v("swan", swan_whiten="newton_schulz"), **_SWAN
  ),
  # Options beyond the paper (multinorm_optax.update_scale,
  # sinkgd_stateless), each tuned in 2-D: a new step-size rule or recipe
  # moves the best lrs.
  "sinkgd_spectral": Variant(_v("sinkgd", update_scale="spectral"), **_TWO),
  "sinkgd_mup": Variant(_v("sinkgd", update_scale="mup"), **_TWO),
  "swan_spectral": Variant(_v("swan", update_scale="spectral"), **_TWO),
  # No AdamW: per-token embedding, SR-Sinkhorn head, sign for norm scales.
  "sinkgd_stateless": Variant(_v("sinkgd_stateless"), **_TWO),
}


def config(name: str, **fields) -> TrainConfig:
  """The checked `TrainConfig` of variant `name`, `fields` on top."""
  return TrainConfig(**{**VARIANTS[name].overrides, **fields})


def legacy_flags(overrides: dict[str, Any]) -> list[str]:
  """`overrides` but the optimizer as train.py flags, in their order: the
  spelling the run store's keys were made from before variants were
  configs (`benchmarks.sweep.run_key`), so stored runs stay found."""
  flags = []
  for name, value in overrides.items():
    if name == "optimizer":
      continue
    if value is True:
      flags.append(flag_name(name))
    else:
      flags += [flag_name(name), str(value)]
  return flags


def unknown(names, allowed=VARIANTS) -> list[str]:
  """The names in `names` that are not in `allowed`."""
  return [n for n in names if n not in allowed]
