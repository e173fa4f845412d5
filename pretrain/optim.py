"""Optimizers by name: the learning-rate schedule and one small builder each.

Every entry of `REGISTRY` owns its hyperparameters (the `TrainConfig` fields
it reads besides the schedule's and `weight_decay`), builds its optax
transform, and names what its state holds beyond the default (`state_kind`:
a checkpoint restores only into the same kind of state). Adding an optimizer
is one builder and one `OptimizerSpec` here; `TrainConfig` refuses a flag
that the chosen optimizer does not read.

sinkgd, swan and muon normalize the hidden matrices (multinorm_optax's labels
under the LLaMA's declared layouts, `weight_dimension_numbers`: its kernels,
scanned or not, that are not embed/lm_head/norm) and give everything else
AdamW. adamw with
`adam_lr` splits the tree the same way: AdamW at lr on the hidden matrices,
AdamW at adam_lr on the rest (the fair baseline for the two-group recipes).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import optax

import multinorm_optax as mo
from models.llama import weight_dimension_numbers

if TYPE_CHECKING:
  from pretrain.config import TrainConfig

MUON_ADAM_LR = 3e-3  # muon's lr is far too large for its AdamW part


def make_schedule(
  peak: float,
  steps: int,
  warmup: int | None = None,
  final_fraction: float = 0.1,
) -> optax.Schedule:
  """Linear warmup from 0 over `warmup` steps (default 10% of `steps`), then cosine
  decay to `final_fraction * peak` at `steps`: the paper's protocol."""
  warmup = max(1, steps // 10) if warmup is None else warmup
  if warmup >= steps:
    return optax.linear_schedule(0.0, peak, warmup)
  return optax.warmup_cosine_decay_schedule(
    0.0,
    peak,
    warmup_steps=warmup,
    decay_steps=steps,
    end_value=final_fraction * peak,
  )


@dataclasses.dataclass(frozen=True)
class Schedules:
  """The run's two peak-lr schedules: `lr` for the optimizer's main group and
  `adam` for its AdamW group (the same schedule unless `adam_lr` is set)."""

  lr: optax.Schedule
  adam: optax.Schedule


def schedules(config: TrainConfig) -> Schedules:
  main = make_schedule(
    config.lr, config.steps, config.warmup, config.final_lr_fraction
  )
  adam_peak = config.adam_lr
  if adam_peak is None and config.optimizer == "muon":
    adam_peak = MUON_ADAM_LR
  if adam_peak is None:
    return Schedules(main, main)
  return Schedules(
    main,
    make_schedule(
      adam_peak, config.steps, config.warmup, config.final_lr_fraction
    ),
  )


def _decay_mask(config: TrainConfig):
  return functools.partial(
    mo.default_weight_decay_mask, decay_embeddings=config.decay_embeddings
  )


def muon_dimension_numbers(params):
  """Muon on the hidden matrices that sinkgd/swan normalize; None (its AdamW) elsewhere,
  so the three optimizers split the parameters the same way. A matrix is its
  last two axes (fan_in, fan_out); leading axes (--scan-layers) are a batch."""
  return jax.tree.map(
    lambda label, p: (
      optax.contrib.MuonDimensionNumbers(p.ndim - 2, p.ndim - 1)
      if label == mo.alias.MATRIX
      else None
    ),
    mo.default_param_labels(params, weight_dimension_numbers),
    params,
  )


def _recipe_options(c: TrainConfig) -> dict:
  """The options every multinorm_optax recipe takes the same way."""
  return dict(
    alpha=c.alpha,
    update_scale=c.update_scale,
    weight_decay=c.weight_decay,
    weight_decay_mask=_decay_mask(c),
    dimension_numbers=weight_dimension_numbers,
  )


def _momentum_options(c: TrainConfig) -> dict:
  return dict(
    momentum=c.momentum, nesterov=c.nesterov, momentum_order=c.momentum_order
  )


def _guard_left_to(
  default: Callable[[TrainConfig], str],
) -> Callable[[TrainConfig], dict]:
  """`library_defaults` of a recipe whose overflow guard, left unset, is
  `default(config)`."""
  return lambda c: (
    {"overflow_guard": default(c)} if c.overflow_guard is None else {}
  )


def _sinkgd(c: TrainConfig, s: Schedules):
  return mo.sinkgd(
    s.lr,
    num_iters=c.num_iters,
    impl=c.sinkgd_impl,
    warm_start=c.warm_start,
    overflow_guard=c.overflow_guard or mo.alias.SINKGD_OVERFLOW_GUARD,
    adam_learning_rate=s.adam,
    **_recipe_options(c),
    **_momentum_options(c),
  )


def _swan(c: TrainConfig, s: Schedules):
  return mo.swan(
    s.lr,
    ns_steps=c.ns_steps,
    whiten_mode=c.swan_whiten or mo.normalizers.DEFAULT_WHITEN_MODE,
    adam_learning_rate=s.adam,
    **_recipe_options(c),
    **_momentum_options(c),
  )


def _sinkgd_stateless(c: TrainConfig, s: Schedules):
  return mo.sinkgd_stateless(
    s.lr,
    num_iters=c.num_iters,
    impl=c.sinkgd_impl,
    rest_learning_rate=s.adam,
    overflow_guard=c.overflow_guard,  # None: the recipe's own
    **_recipe_options(c),
  )


def _adamw(c: TrainConfig, s: Schedules):
  adamw = functools.partial(
    optax.adamw, weight_decay=c.weight_decay, mask=_decay_mask(c)
  )
  if c.adam_lr is None:
    return adamw(s.lr)
  # The fair baseline for the recipes: their two groups, each with its own lr.
  return optax.partition(
    {mo.alias.MATRIX: adamw(s.lr), mo.alias.ADAM: adamw(s.adam)},
    functools.partial(
      mo.default_param_labels, dimension_numbers=weight_dimension_numbers
    ),
  )


def _adafactor(c: TrainConfig, s: Schedules):
  return optax.adafactor(
    s.lr,
    weight_decay_rate=c.weight_decay or None,
    weight_decay_mask=_decay_mask(c),
  )


def _muon(c: TrainConfig, s: Schedules):
  # optax.contrib.muon takes no weight-decay mask: it decays all its leaves.
  return optax.contrib.muon(
    s.lr,
    weight_decay=c.weight_decay,
    adam_weight_decay=c.weight_decay,
    adam_learning_rate=s.adam,
    muon_weight_dimension_numbers=muon_dimension_numbers,
  )


def _sgd(c: TrainConfig, s: Schedules):
  return optax.chain(
    optax.add_decayed_weights(c.weight_decay, _decay_mask(c)),
    optax.sgd(s.lr),
  )


def _momentum_kind(c: TrainConfig) -> dict:
  return {} if c.momentum is None else {"momentum_order": c.momentum_order}


def _update_scale_kind(c: TrainConfig) -> dict:
  return {} if c.update_scale == "rms" else {"update_scale": c.update_scale}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One optimizer of `--optimizer`.

  Attributes:
    default_lr: the peak lr that trains the tiny model well in the default run.
    hyperparameters: the `TrainConfig` fields this optimizer reads beyond
      lr, the schedule's fields, weight_decay and grad_clip.
    build: (config, schedules) -> the optax transform.
    state_kind: config -> what the state holds beyond the defaults (empty for
      the defaults, so older run records still match).
    library_defaults: config -> the fields left at None ("the library's
      default") with the value the library resolves them to, recorded so a
      resume under a changed default says so instead of switching silently.
  """

  default_lr: float
  hyperparameters: frozenset[str]
  build: Callable[[TrainConfig, Schedules], optax.GradientTransformation]
  state_kind: Callable[[TrainConfig], dict] = lambda c: {}
  library_defaults: Callable[[TrainConfig], dict] = lambda c: {}


_NORMALIZED = {"adam_lr", "alpha", "update_scale", "decay_embeddings"}
_SINKHORN = {"num_iters", "sinkgd_impl"}
_MOMENTUM = {"momentum", "nesterov", "momentum_order"}

REGISTRY: dict[str, OptimizerSpec] = {
  "sinkgd": OptimizerSpec(
    0.03,
    frozenset(
      _NORMALIZED | _SINKHORN | _MOMENTUM | {"warm_start", "overflow_guard"}
    ),
    _sinkgd,
    state_kind=lambda c: (
      ({"warm_start": True} if c.warm_start else {})
      | _momentum_kind(c)
      | _update_scale_kind(c)
    ),
    library_defaults=_guard_left_to(lambda c: mo.alias.SINKGD_OVERFLOW_GUARD),
  ),
  "swan": OptimizerSpec(
    0.03,
    frozenset(_NORMALIZED | _MOMENTUM | {"swan_whiten", "ns_steps"}),
    _swan,
    state_kind=lambda c: _momentum_kind(c) | _update_scale_kind(c),
    library_defaults=lambda c: (
      {"swan_whiten": mo.normalizers.DEFAULT_WHITEN_MODE}
      if c.swan_whiten is None
      else {}
    ),
  ),
  "adamw": OptimizerSpec(
    0.003, frozenset({"adam_lr", "decay_embeddings"}), _adamw
  ),
  "adafactor": OptimizerSpec(0.01, frozenset({"decay_embeddings"}), _adafactor),
  "muon": OptimizerSpec(0.02, frozenset({"adam_lr"}), _muon),
  "sgd": OptimizerSpec(0.3, frozenset({"decay_embeddings"}), _sgd),
  "sinkgd_stateless": OptimizerSpec(
    0.03,
    frozenset(_NORMALIZED | _SINKHORN | {"overflow_guard"}),
    _sinkgd_stateless,
    state_kind=_update_scale_kind,
    library_defaults=_guard_left_to(
      lambda c: mo.alias.stateless_overflow_guard(c.sinkgd_impl)
    ),
  ),
}
OPTIMIZERS = tuple(REGISTRY)


def applicable_fields(optimizer: str) -> frozenset[str]:
  """The optimizer-specific `TrainConfig` fields that `optimizer` reads."""
  return REGISTRY[optimizer].hyperparameters


def build_optimizer(
  config: TrainConfig, schedule: optax.Schedule | None = None
) -> optax.GradientTransformation:
  """The optax transform of `config.optimizer`. `schedule` replaces the main
  lr schedule (and the AdamW group's, unless `adam_lr` or muon sets its own)."""
  s = schedules(config)
  if schedule is not None:
    own_adam = config.adam_lr is not None or config.optimizer == "muon"
    s = Schedules(schedule, s.adam if own_adam else schedule)
  return REGISTRY[config.optimizer].build(config, s)


def make_optimizer(
  config: TrainConfig,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(the optax transform of `config.optimizer`, its main lr schedule)."""
  schedule = schedules(config).lr
  return build_optimizer(config, schedule), schedule
