"""The run's configuration: one typed dataclass, the single source of every flag.

    from pretrain.config import TrainConfig
    config = TrainConfig(model="350m", optimizer="adamw", batch_size=64)

Each field is the flag of the same name (`batch_size` is `--batch-size`); its
metadata carries the flag's help, group, choices and bounds, and
`pretrain.cli` builds the parser from them. A config is checked when it is
made (`__post_init__`), so one built in code is refused exactly like the same
values on the command line: one `ConfigError` line naming the flag and what it
allows, before anything is built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Sequence

from models.llama import ATTENTION_IMPLS, CONFIGS, REMAT_POLICIES
from multinorm_optax.alias import MOMENTUM_ORDERS
from multinorm_optax.multinorm import SINKGD_IMPLS
from multinorm_optax.normalizers import WHITEN_MODES
from multinorm_optax.sinkhorn import OVERFLOW_GUARDS
from multinorm_optax.update_scale import UPDATE_SCALES
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, REGISTRY, applicable_fields

__all__ = ["DEFAULT_LR", "GROUPS", "OPTIMIZERS", "Bounds", "TrainConfig"]

# Peak learning rates that train the tiny model well in the default run.
DEFAULT_LR = {name: spec.default_lr for name, spec in REGISTRY.items()}
# The flag groups of `--help`, in order.
GROUPS = ("model", "optimizer", "data", "outputs", "devices")
# jax.random.key keeps the low 32 bits of a seed only: seed 2**32 would repeat 0.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Bounds:
  """The interval a number must lie in (None: unbounded on that side); float
  fields must also be finite."""

  low: float | None = None
  high: float | None = None
  high_open: bool = False
  low_open: bool = False

  def contains(self, x) -> bool:
    if self.low is not None and (
      x <= self.low if self.low_open else x < self.low
    ):
      return False
    return self.high is None or (
      x < self.high if self.high_open else x <= self.high
    )

  def describe(self) -> str:
    low, high = _number(self.low), _number(self.high)
    if self.low is not None and self.high is not None:
      return (
        f"in {'(' if self.low_open else '['}{low}, "
        f"{high}{')' if self.high_open else ']'}"
      )
    if self.low is not None:
      return f"{'greater than' if self.low_open else 'at least'} {low}"
    return f"{'less than' if self.high_open else 'at most'} {high}"


def _number(x) -> str:
  """1, 0.5, 4294967295: integers in full, other numbers as %g."""
  if x is None:
    return ""
  return str(int(x)) if float(x).is_integer() else f"{x:g}"


AT_LEAST_0 = Bounds(low=0)
AT_LEAST_1 = Bounds(low=1)
POSITIVE = Bounds(low=0, low_open=True)


def _flag(
  default,
  help: str,
  *,
  group: str,
  choices: Sequence[str] | None = None,
  bounds: Bounds | None = None,
  env: str | None = None,
  metavar: str | None = None,
  record: bool = True,
):
  """A field with its flag's metadata. `env`: the CLI's default comes from this
  environment variable; `record=False`: not part of the run record (how this
  process runs, not what it trains)."""
  meta = dict(
    help=help,
    group=group,
    choices=None if choices is None else tuple(choices),
    bounds=bounds,
    env=env,
    metavar=metavar,
    record=record,
  )
  return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
  """`batch_size` -> `--batch-size`."""
  return "--" + field_name.replace("_", "-")


@dataclasses.dataclass
class TrainConfig:
  """Everything that describes a training run (see `train.py --help`).

  `lr=None` takes the optimizer's entry of `DEFAULT_LR`.

  Raises:
    ConfigError: a value of the wrong type, outside its bounds or choices, or
      a flag that does not apply to the chosen optimizer.
  """

  # model
  model: str = _flag(
    "tiny", "tiny, 60m, 130m, 350m, 1b or 7b (%(default)s)", group="model"
  )
  d_model: int | None = _flag(
    None,
    "widen or narrow --model to this width: same depth and head size, "
    "heads and d_ff scaled (default: the preset's)",
    group="model",
    bounds=AT_LEAST_1,
  )
  dtype: str = _flag(
    "auto",
    "compute dtype; auto: float32 on CPU, bfloat16 on GPU/TPU "
    "(parameters are float32 either way)",
    group="model",
    choices=("auto", "float32", "bfloat16"),
  )
  remat: str = _flag(
    "none",
    "recompute activations in the backward pass: block keeps each "
    "block's weight-matmul outputs, full only its input (%(default)s)",
    group="model",
    choices=tuple(REMAT_POLICIES),
  )
  scan_layers: bool = _flag(
    False,
    "the blocks as one scan over stacked (layers, in, out) parameters: "
    "compile time independent of depth; checkpoints of one layout do not "
    "resume in the other",
    group="model",
  )
  attention: str = _flag(
    "auto",
    "auto: cuDNN flash attention on GPU in bf16, XLA elsewhere; einsum: "
    "the reference (%(default)s)",
    group="model",
    choices=ATTENTION_IMPLS,
  )
  # optimizer
  optimizer: str = _flag(
    "sinkgd",
    "(%(default)s) sinkgd, swan: the paper's recipe, normalized "
    "hidden matrices and AdamW for the rest; sinkgd_stateless: no AdamW, "
    "no optimizer state (per-token embedding steps, SR-Sinkhorn head, sign "
    "steps for norm scales, at --adam-lr)",
    group="optimizer",
    choices=OPTIMIZERS,
  )
  lr: float | None = _flag(
    None,
    "peak learning rate (default per optimizer: "
    + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    + ")",
    group="optimizer",
    bounds=POSITIVE,
  )
  adam_lr: float | None = _flag(
    None,
    "sinkgd/swan/muon/adamw: peak lr of the AdamW group (embeddings, "
    "head, norms; sinkgd_stateless: of its stateless steps for them); "
    "default --lr, or 0.003 for muon; adamw with it "
    "steps the hidden matrices at --lr and the rest at --adam-lr",
    group="optimizer",
    bounds=POSITIVE,
  )
  alpha: float = _flag(
    0.05,
    "sinkgd/swan: hidden matrices step alpha * lr (%(default)s)",
    group="optimizer",
    bounds=POSITIVE,
  )
  num_iters: int = _flag(
    5,
    "sinkgd: SR-Sinkhorn rounds (%(default)s)",
    group="optimizer",
    bounds=AT_LEAST_1,
  )
  sinkgd_impl: str = _flag(
    "auto",
    "sinkgd: SR-Sinkhorn implementation (%(default)s)",
    group="optimizer",
    choices=SINKGD_IMPLS,
  )
  warm_start: bool = _flag(
    False,
    "sinkgd: start each step's SR-Sinkhorn from the previous step's "
    "column scaling (n floats of state per matrix)",
    group="optimizer",
  )
  overflow_guard: str | None = _flag(
    None,
    "sinkgd/sinkgd_stateless: max_abs reads max|G| every step; on_demand "
    "only when a sum of squares over- or underflows (default: the recipe's, "
    "max_abs for sinkgd, on_demand for sinkgd_stateless)",
    group="optimizer",
    choices=OVERFLOW_GUARDS,
  )
  momentum: float | None = _flag(
    None,
    "sinkgd/swan: momentum beta of the hidden matrices, one buffer per "
    "matrix (default: none, stateless)",
    group="optimizer",
    bounds=Bounds(low=0, high=1, high_open=True),
  )
  nesterov: bool = _flag(
    False, "sinkgd/swan: Nesterov form of --momentum", group="optimizer"
  )
  momentum_order: str = _flag(
    "normalize_then_average",
    "sinkgd/swan: average normalized gradients, or normalize the "
    "average of raw gradients (%(default)s)",
    group="optimizer",
    choices=MOMENTUM_ORDERS,
  )
  swan_whiten: str | None = _flag(
    None,
    "swan: whitening mode (default: multinorm_optax.swan's)",
    group="optimizer",
    choices=WHITEN_MODES,
  )
  update_scale: str = _flag(
    "rms",
    "sinkgd/swan/sinkgd_stateless: the hidden matrices' step size rule: "
    "rms, RMS-1 updates (the paper's); spectral, operator norm "
    "sqrt(fan_out/fan_in) for a flat spectrum; mup, 1/fan_in "
    "(multinorm_optax.update_scale; lrs differ between rules) (%(default)s)",
    group="optimizer",
    choices=UPDATE_SCALES,
  )
  ns_steps: int | None = _flag(
    None,
    "swan: whitening iterations (default: the mode's)",
    group="optimizer",
    bounds=AT_LEAST_1,
  )
  weight_decay: float = _flag(
    0.0,
    "decoupled weight decay of weight matrices; vectors, norm scales "
    "and embeddings are not decayed (%(default)s)",
    group="optimizer",
    bounds=AT_LEAST_0,
  )
  decay_embeddings: bool = _flag(
    False,
    "decay the embedding table too (nanoGPT's choice)",
    group="optimizer",
  )
  warmup: int | None = _flag(
    None,
    "linear warmup steps (default 10%% of --steps), then cosine decay",
    group="optimizer",
    bounds=AT_LEAST_0,
  )
  final_lr_fraction: float = _flag(
    0.1,
    "the cosine decay ends at this fraction of the peak lr (%(default)s)",
    group="optimizer",
    bounds=Bounds(low=0, high=1),
  )
  grad_clip: float = _flag(
    1.0,
    "clip gradients to this global norm; 0: off (%(default)s)",
    group="optimizer",
    bounds=AT_LEAST_0,
  )
  # data
  data: str | None = _flag(
    None,
    "stdlib (default: the Python standard library's sources), jaxstack "
    "(the sources of numpy, jax, flax, optax, orbax, chex), a text "
    "file/dir/glob, PATH.bin[:uint32] or hf:NAME[:CONFIG]",
    group="data",
  )
  tokenizer: str | None = _flag(
    None,
    "byte (default), a tokenizer.json or a sentencepiece .model",
    group="data",
  )
  steps: int = _flag(600, "(%(default)s)", group="data", bounds=AT_LEAST_1)
  batch_size: int = _flag(
    16,
    "global batch, in sequences (%(default)s)",
    group="data",
    bounds=AT_LEAST_1,
  )
  seq_len: int = _flag(128, "(%(default)s)", group="data", bounds=AT_LEAST_1)
  grad_accum: int = _flag(
    1,
    "split each batch into K microbatches whose float32 gradients are "
    "summed inside one step: the same update in 1/K of the activation "
    "memory (%(default)s)",
    group="data",
    bounds=AT_LEAST_1,
    metavar="K",
  )
  seed: int = _flag(
    0,
    "model init and data order (%(default)s)",
    group="data",
    bounds=Bounds(low=0, high=MAX_SEED),
  )
  # outputs
  run_dir: str = _flag(
    os.path.join("runs", "default"),
    "holds ckpt/ and metrics.jsonl unless --ckpt-dir/--metrics say "
    "(%(default)s)",
    group="outputs",
  )
  ckpt_dir: str | None = _flag(None, "default: RUN_DIR/ckpt", group="outputs")
  resume: bool = _flag(
    False,
    "continue from the latest checkpoint in the checkpoint dir, if any",
    group="outputs",
  )
  ckpt_every: int = _flag(
    200,
    "save every N steps and at the end; 0: never save (%(default)s)",
    group="outputs",
    bounds=AT_LEAST_0,
  )
  keep: int = _flag(
    3,
    "keep the last N checkpoints; 0: all (%(default)s)",
    group="outputs",
    bounds=AT_LEAST_0,
  )
  eval_every: int = _flag(
    100,
    "evaluate every N steps and at the end; 0: only at the end (%(default)s)",
    group="outputs",
    bounds=AT_LEAST_0,
  )
  eval_batches: int = _flag(
    8,
    "validation batches per evaluation; 0: no evaluation (%(default)s)",
    group="outputs",
    bounds=AT_LEAST_0,
  )
  log_every: int = _flag(
    10,
    "write a metrics line every N steps (%(default)s)",
    group="outputs",
    bounds=AT_LEAST_1,
  )
  metrics: str | None = _flag(
    None,
    "metrics JSONL file (default: RUN_DIR/metrics.jsonl; none: off)",
    group="outputs",
  )
  tensorboard: bool = _flag(
    False,
    "also write the metrics as TensorBoard scalars, to tensorboard/ "
    "next to the metrics file (needs tensorboardX)",
    group="outputs",
  )
  no_progress: bool = _flag(
    False, "no progress bar", group="outputs", record=False
  )
  inject_nan_at: int | None = _flag(
    None,
    "testing aid: make the loss of step STEP (the STEP-th update, as "
    "metrics and checkpoints count) NaN",
    group="outputs",
    bounds=AT_LEAST_1,
    metavar="STEP",
  )
  # devices
  mesh: str | None = _flag(
    None,
    "axis sizes, e.g. data=2,fsdp=4,tensor=1; fsdp, if left out, takes "
    "the devices the others leave (default: all devices on fsdp)",
    group="devices",
  )
  devices: int | None = _flag(
    None,
    "use only the first N devices (single process)",
    group="devices",
    bounds=AT_LEAST_1,
  )
  cpu_devices: int | None = _flag(
    None,
    "simulate N CPU devices (before JAX has started)",
    group="devices",
    bounds=AT_LEAST_1,
    record=False,
  )
  coordinator: str | None = _flag(
    None,
    "multi-process: HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS)",
    group="devices",
    env="JAX_COORDINATOR_ADDRESS",
    record=False,
  )
  num_processes: int | None = _flag(
    None,
    "multi-process: how many (default: $JAX_NUM_PROCESSES)",
    group="devices",
    bounds=AT_LEAST_1,
    env="JAX_NUM_PROCESSES",
  )
  process_id: int | None = _flag(
    None,
    "multi-process: this one's index (default: $JAX_PROCESS_ID)",
    group="devices",
    bounds=AT_LEAST_0,
    env="JAX_PROCESS_ID",
    record=False,
  )

  def __post_init__(self):
    for field in dataclasses.fields(self):
      _check_field(field, getattr(self, field.name))
    if self.model not in CONFIGS:
      raise ConfigError(
        f"--model: unknown model {self.model!r}; choose one of: "
        f"{', '.join(CONFIGS)}"
      )
    _check_applies_to_optimizer(self)
    if self.lr is None:
      self.lr = DEFAULT_LR[self.optimizer]


def field_type(field: dataclasses.Field) -> type:
  """int, float, bool or str: the field's type without its `| None`."""
  hint = _hints()[field.name]
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  return args[0] if args else hint


@functools.cache
def _hints() -> dict:
  return typing.get_type_hints(TrainConfig)


def _check_field(field: dataclasses.Field, value) -> None:
  """One line naming the flag when `value` is not of the field's type, its
  choices or its bounds (None only where the default is None)."""
  name, meta = flag_name(field.name), field.metadata
  if value is None:
    if field.default is None:
      return
    raise ConfigError(f"{name} must be set (it has no 'none' value)")
  kind = field_type(field)
  if kind is bool:
    ok = isinstance(value, bool)
  elif kind is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif kind is float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
  else:
    ok = isinstance(value, str)
  if not ok:
    raise ConfigError(
      f"{name} must be {'a' if kind is not int else 'an'} "
      f"{'integer' if kind is int else kind.__name__}, got {value!r}"
    )
  if meta["choices"] is not None and value not in meta["choices"]:
    raise ConfigError(
      f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}"
    )
  bounds = meta["bounds"]
  if kind is float and not math.isfinite(value):
    raise ConfigError(
      f"{name} must be a finite number"
      + (f" {bounds.describe()}" if bounds else "")
      + f", got {value!r}"
    )
  if bounds is not None and not bounds.contains(value):
    raise ConfigError(f"{name} must be {bounds.describe()}, got {value!r}")


def _check_applies_to_optimizer(config: TrainConfig) -> None:
  """A flag of another optimizer, set away from its default, is refused rather
  than silently ignored."""
  fields = {f.name: f for f in dataclasses.fields(config)}
  mine = applicable_fields(config.optimizer)
  for name in sorted(set().union(*map(applicable_fields, OPTIMIZERS)) - mine):
    if getattr(config, name) != fields[name].default:
      users = [o for o in OPTIMIZERS if name in applicable_fields(o)]
      raise ConfigError(
        f"{flag_name(name)} does not apply to --optimizer {config.optimizer} "
        f"(it applies to {', '.join(users)})"
      )


def recorded_fields() -> tuple[str, ...]:
  """The fields a run record keeps (what the run trains, not how this process
  runs it)."""
  return tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata["record"]
  )
