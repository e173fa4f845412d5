"""Pretrain a LLaMA with SinkGD (or SWAN, AdamW, Adafactor, Muon, SGD) on a device mesh.

    python train.py                       # tiny model, SinkGD, stdlib corpus: ~3 min on CPU
    python train.py --model 60m --tokenizer llama/tokenizer.model --data 'corpus/*.txt' \\
        --batch-size 512 --seq-len 256 --steps 10000 --mesh data=1,fsdp=8,tensor=1

The loop: build the mesh -> build the model and optimizer state sharded on it ->
restore the latest checkpoint or start at step 0 -> for each step: batch -> train_step
-> log, evaluate, checkpoint. The batch of a step is a pure function of (seed, step),
so the step is the data position and a resumed run replays exactly what an
uninterrupted one would have done.

Outputs, under --run-dir (default runs/default): orbax checkpoints in `ckpt/<step>/`
and `metrics.jsonl` (see pretrain/metrics.py). A directory that already holds
checkpoints is never overwritten: continue it with --resume or pick another.

Multi-host: start one process per host with --coordinator HOST:PORT --num-processes N
--process-id I (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Each
process loads only its rows of the global batch; process 0 prints and writes metrics;
every process writes its shards of the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import multinorm_optax as mo
from models.llama import (
  ATTENTION_IMPLS,
  REMAT_POLICIES,
  abstract_model,
  abstract_params,
  attention_impl,
  count_params,
  create_sharded_model,
  get_config,
  unsplit_dims,
)
from multinorm_optax.multinorm import SINKGD_IMPLS
from pretrain import mesh as meshlib
from pretrain.checkpoint import Checkpoints, SaveError
from pretrain.config import DEFAULT_LR, OPTIMIZERS, TrainConfig
from pretrain.data import BatchSampler, load_corpus, validation_batches
from pretrain.flops import flops_per_token, peak_flops
from pretrain.metrics import RunLog, check_metrics_file
from pretrain.paths import check_writable_dir
from pretrain.tokenizer import load_tokenizer

__all__ = ["DEFAULT_LR", "OPTIMIZERS", "TrainConfig"]  # re-exported
# The run record's name of each parameter layout (--scan-layers or not).
LAYOUTS = {False: "unrolled layers", True: "scanned layers (--scan-layers)"}
MUON_ADAM_LR = 3e-3  # muon's lr is far too large for the AdamW part
SAVE_FAILED = 4  # the exit code when a checkpoint save failed


class NonFiniteLossError(RuntimeError):
  """The loss, gradient or parameters went NaN/Inf; `summary` holds the run so far."""

  def __init__(self, message: str, summary: dict):
    super().__init__(message)
    self.summary = summary


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, no usage block
    self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None) -> TrainConfig:
  """The command line as a `TrainConfig`; a bad flag exits (2) with one line."""
  p = _Parser(prog="train.py", description=__doc__.split("\n\n")[0])
  env = os.environ.get
  g = p.add_argument_group("model and optimizer")
  g.add_argument(
    "--model",
    default="tiny",
    help="tiny, 60m, 130m, 350m, 1b or 7b (%(default)s)",
  )
  g.add_argument(
    "--d-model",
    type=int,
    default=None,
    help="widen or narrow --model to this width: same depth and head size, "
    "heads and d_ff scaled (default: the preset's)",
  )
  g.add_argument(
    "--optimizer",
    default="sinkgd",
    choices=OPTIMIZERS,
    help="(%(default)s) sinkgd, swan: the paper's recipe, normalized "
    "hidden matrices and AdamW for the rest; sinkgd_stateless: no AdamW, "
    "no optimizer state (per-token embedding steps, SR-Sinkhorn head, sign "
    "steps for norm scales, at --adam-lr)",
  )
  g.add_argument(
    "--lr",
    type=float,
    default=None,
    help="peak learning rate (default per optimizer: "
    + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    + ")",
  )
  g.add_argument(
    "--adam-lr",
    type=float,
    default=None,
    help="sinkgd/swan/muon/adamw: peak lr of the AdamW group (embeddings, "
    "head, norms; sinkgd_stateless: of its stateless steps for them); "
    f"default --lr, or {MUON_ADAM_LR:g} for muon; adamw with it "
    "steps the hidden matrices at --lr and the rest at --adam-lr",
  )
  g.add_argument(
    "--alpha",
    type=float,
    default=0.05,
    help="sinkgd/swan: hidden matrices step alpha * lr (%(default)s)",
  )
  g.add_argument(
    "--num-iters",
    type=int,
    default=5,
    help="sinkgd: SR-Sinkhorn rounds (%(default)s)",
  )
  g.add_argument(
    "--sinkgd-impl",
    default="auto",
    choices=SINKGD_IMPLS,
    help="sinkgd: SR-Sinkhorn implementation (%(default)s)",
  )
  g.add_argument(
    "--update-scale",
    default="rms",
    choices=mo.UPDATE_SCALES,
    help="sinkgd/swan/sinkgd_stateless: the hidden matrices' step size rule: "
    "rms, RMS-1 updates (the paper's); spectral, operator norm "
    "sqrt(fan_out/fan_in) for a flat spectrum; mup, 1/fan_in "
    "(multinorm_optax.update_scale; lrs differ between rules) (%(default)s)",
  )
  g.add_argument(
    "--warm-start",
    action="store_true",
    help="sinkgd: start each step's SR-Sinkhorn from the previous step's "
    "column scaling (n floats of state per matrix)",
  )
  g.add_argument(
    "--overflow-guard",
    default="max_abs",
    choices=mo.sinkhorn.OVERFLOW_GUARDS,
    help="sinkgd: max_abs reads max|G| every step; on_demand only when a sum "
    "of squares over- or underflows (%(default)s)",
  )
  g.add_argument(
    "--momentum",
    type=float,
    default=None,
    help="sinkgd/swan: momentum beta of the hidden matrices, one buffer per "
    "matrix (default: none, stateless)",
  )
  g.add_argument(
    "--nesterov",
    action="store_true",
    help="sinkgd/swan: Nesterov form of --momentum",
  )
  g.add_argument(
    "--momentum-order",
    default="normalize_then_average",
    choices=mo.alias.MOMENTUM_ORDERS,
    help="sinkgd/swan: average normalized gradients, or normalize the "
    "average of raw gradients (%(default)s)",
  )
  g.add_argument(
    "--swan-whiten",
    default=None,
    choices=mo.normalizers.WHITEN_MODES,
    help="swan: whitening mode (default: multinorm_optax.swan's)",
  )
  g.add_argument(
    "--ns-steps",
    type=int,
    default=None,
    help="swan: whitening iterations (default: the mode's)",
  )
  g.add_argument(
    "--weight-decay",
    type=float,
    default=0.0,
    help="decoupled weight decay of weight matrices; vectors, norm scales "
    "and embeddings are not decayed (%(default)s)",
  )
  g.add_argument(
    "--decay-embeddings",
    action="store_true",
    help="decay the embedding table too (nanoGPT's choice)",
  )
  g.add_argument(
    "--warmup",
    type=int,
    default=None,
    help="linear warmup steps (default 10%% of --steps), then cosine decay",
  )
  g.add_argument(
    "--final-lr-fraction",
    type=float,
    default=0.1,
    help="the cosine decay ends at this fraction of the peak lr (%(default)s)",
  )
  g.add_argument(
    "--grad-clip",
    type=float,
    default=1.0,
    help="clip gradients to this global norm; 0: off (%(default)s)",
  )
  g.add_argument(
    "--dtype",
    default="auto",
    choices=("auto", "float32", "bfloat16"),
    help="compute dtype; auto: float32 on CPU, bfloat16 on GPU/TPU "
    "(parameters are float32 either way)",
  )
  g.add_argument(
    "--remat",
    default="none",
    choices=tuple(REMAT_POLICIES),
    help="recompute activations in the backward pass: block keeps each "
    "block's weight-matmul outputs, full only its input (%(default)s)",
  )
  g.add_argument(
    "--scan-layers",
    action="store_true",
    help="the blocks as one scan over stacked (layers, in, out) parameters: "
    "compile time independent of depth; checkpoints of one layout do not "
    "resume in the other",
  )
  g.add_argument(
    "--attention",
    default="auto",
    choices=ATTENTION_IMPLS,
    help="auto: cuDNN flash attention on GPU in bf16, XLA elsewhere; einsum: "
    "the reference (%(default)s)",
  )
  g = p.add_argument_group("data")
  g.add_argument(
    "--data",
    default=None,
    help="stdlib (default: the Python standard library's sources), jaxstack "
    "(the sources of numpy, jax, flax, optax, orbax, chex), a text "
    "file/dir/glob, PATH.bin[:uint32] or hf:NAME[:CONFIG]",
  )
  g.add_argument(
    "--tokenizer",
    default=None,
    help="byte (default), a tokenizer.json or a sentencepiece .model",
  )
  g.add_argument("--steps", type=int, default=600, help="(%(default)s)")
  g.add_argument(
    "--batch-size",
    type=int,
    default=16,
    help="global batch, in sequences (%(default)s)",
  )
  g.add_argument("--seq-len", type=int, default=128, help="(%(default)s)")
  g.add_argument(
    "--grad-accum",
    type=int,
    default=1,
    metavar="K",
    help="split each batch into K microbatches whose float32 gradients are "
    "summed inside one step: the same update in 1/K of the activation "
    "memory (%(default)s)",
  )
  g.add_argument(
    "--seed",
    type=int,
    default=0,
    help="model init and data order (%(default)s)",
  )
  g = p.add_argument_group("outputs")
  g.add_argument(
    "--run-dir",
    default=os.path.join("runs", "default"),
    help="holds ckpt/ and metrics.jsonl unless --ckpt-dir/--metrics say "
    "(%(default)s)",
  )
  g.add_argument("--ckpt-dir", default=None, help="default: RUN_DIR/ckpt")
  g.add_argument(
    "--resume",
    action="store_true",
    help="continue from the latest checkpoint in the checkpoint dir, if any",
  )
  g.add_argument(
    "--ckpt-every",
    type=int,
    default=200,
    help="save every N steps and at the end; 0: never save (%(default)s)",
  )
  g.add_argument(
    "--keep",
    type=int,
    default=3,
    help="keep the last N checkpoints; 0: all (%(default)s)",
  )
  g.add_argument(
    "--eval-every",
    type=int,
    default=100,
    help="evaluate every N steps and at the end; 0: only at the end "
    "(%(default)s)",
  )
  g.add_argument(
    "--eval-batches",
    type=int,
    default=8,
    help="validation batches per evaluation; 0: no evaluation (%(default)s)",
  )
  g.add_argument(
    "--log-every",
    type=int,
    default=10,
    help="write a metrics line every N steps (%(default)s)",
  )
  g.add_argument(
    "--metrics",
    default=None,
    help="metrics JSONL file (default: RUN_DIR/metrics.jsonl; none: off)",
  )
  g.add_argument(
    "--tensorboard",
    action="store_true",
    help="also write the metrics as TensorBoard scalars, to tensorboard/ "
    "next to the metrics file (needs tensorboardX)",
  )
  g.add_argument("--no-progress", action="store_true", help="no progress bar")
  g.add_argument(
    "--inject-nan-at",
    type=int,
    default=None,
    metavar="STEP",
    help="testing aid: make the loss at STEP NaN",
  )
  g = p.add_argument_group("devices")
  g.add_argument(
    "--mesh",
    default=None,
    help="axis sizes, e.g. data=2,fsdp=4,tensor=1; fsdp, if left out, takes "
    "the devices the others leave (default: all devices on fsdp)",
  )
  g.add_argument(
    "--devices",
    type=int,
    default=None,
    help="use only the first N devices (single process)",
  )
  g.add_argument(
    "--cpu-devices",
    type=int,
    default=None,
    help="simulate N CPU devices (before JAX has started)",
  )
  g.add_argument(
    "--coordinator",
    default=env("JAX_COORDINATOR_ADDRESS"),
    help="multi-process: HOST:PORT of process 0 "
    "(default: $JAX_COORDINATOR_ADDRESS)",
  )
  g.add_argument(
    "--num-processes",
    type=int,
    default=env("JAX_NUM_PROCESSES"),
    help="multi-process: how many (default: $JAX_NUM_PROCESSES)",
  )
  g.add_argument(
    "--process-id",
    type=int,
    default=env("JAX_PROCESS_ID"),
    help="multi-process: this one's index (default: $JAX_PROCESS_ID)",
  )
  args = p.parse_args(argv)
  for name in (
    "steps",
    "batch_size",
    "seq_len",
    "log_every",
    "num_iters",
    "ns_steps",
    "grad_accum",
  ):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be at least 1")
  for name in ("ckpt_every", "eval_every", "eval_batches", "keep", "grad_clip"):
    if getattr(args, name) < 0:
      p.error(f"--{name.replace('_', '-')} must not be negative")
  if args.momentum is not None and not 0 <= args.momentum < 1:
    p.error(f"--momentum must be in [0, 1), got {args.momentum:g}")
  for name in ("devices", "cpu_devices"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be at least 1")
  return TrainConfig(**vars(args))


def setup_runtime(args) -> None:
  """Simulated CPU devices and multi-process init: both must precede any JAX op."""
  if (
    args.cpu_devices is not None
    and jax.config.jax_num_cpu_devices != args.cpu_devices
  ):
    try:
      jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    except RuntimeError:
      raise ValueError(
        f"--cpu-devices {args.cpu_devices}: JAX has already started "
        f"with {len(jax.devices())} devices"
      ) from None
  if (args.num_processes or 1) > 1 and not jax.distributed.is_initialized():
    if args.coordinator is None or args.process_id is None:
      raise ValueError(
        "--num-processes > 1 needs --coordinator and --process-id"
      )
    # CPU collectives across processes need gloo; GPU/TPU backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      args.coordinator, args.num_processes, args.process_id
    )


# ------------------------------------------------------------------ optimization


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
    mo.default_param_labels(params),
    params,
  )


def build_optimizer(
  name: str, schedule: optax.Schedule, args
) -> optax.GradientTransformation:
  """The optimizer `name` stepping by `schedule`; hyperparameters from `args`.

  sinkgd, swan and muon normalize the hidden matrices (multinorm_optax's labels: 2-D
  and not embed/lm_head/norm) and give everything else AdamW. adamw with
  `args.adam_lr` splits the tree the same way: AdamW at lr on the hidden
  matrices, AdamW at adam_lr on the rest.
  """
  wd = args.weight_decay
  decay_mask = functools.partial(
    mo.default_weight_decay_mask, decay_embeddings=args.decay_embeddings
  )
  adam_schedule = schedule
  if args.adam_lr is not None or name == "muon":
    peak = MUON_ADAM_LR if args.adam_lr is None else args.adam_lr
    adam_schedule = make_schedule(
      peak, args.steps, args.warmup, args.final_lr_fraction
    )
  if name == "sinkgd":
    return mo.sinkgd(
      schedule,
      alpha=args.alpha,
      num_iters=args.num_iters,
      impl=args.sinkgd_impl,
      update_scale=args.update_scale,
      warm_start=args.warm_start,
      overflow_guard=args.overflow_guard,
      momentum=args.momentum,
      nesterov=args.nesterov,
      momentum_order=args.momentum_order,
      weight_decay=wd,
      weight_decay_mask=decay_mask,
      adam_learning_rate=adam_schedule,
    )
  if name == "swan":
    return mo.swan(
      schedule,
      alpha=args.alpha,
      ns_steps=args.ns_steps,
      whiten_mode=args.swan_whiten or mo.normalizers.DEFAULT_WHITEN_MODE,
      update_scale=args.update_scale,
      momentum=args.momentum,
      nesterov=args.nesterov,
      momentum_order=args.momentum_order,
      weight_decay=wd,
      weight_decay_mask=decay_mask,
      adam_learning_rate=adam_schedule,
    )
  if name == "sinkgd_stateless":
    return mo.sinkgd_stateless(
      schedule,
      alpha=args.alpha,
      num_iters=args.num_iters,
      impl=args.sinkgd_impl,
      update_scale=args.update_scale,
      weight_decay=wd,
      weight_decay_mask=decay_mask,
      rest_learning_rate=adam_schedule,
    )
  if name == "adamw":
    if args.adam_lr is None:
      return optax.adamw(schedule, weight_decay=wd, mask=decay_mask)
    # The fair baseline for the recipes: their two groups, each with its own lr.
    return optax.partition(
      {
        mo.alias.MATRIX: optax.adamw(
          schedule, weight_decay=wd, mask=decay_mask
        ),
        mo.alias.ADAM: optax.adamw(
          adam_schedule, weight_decay=wd, mask=decay_mask
        ),
      },
      mo.default_param_labels,
    )
  if name == "adafactor":
    return optax.adafactor(
      schedule, weight_decay_rate=wd or None, weight_decay_mask=decay_mask
    )
  if name == "muon":
    return optax.contrib.muon(
      schedule,
      weight_decay=wd,
      adam_weight_decay=wd,
      adam_learning_rate=adam_schedule,
      muon_weight_dimension_numbers=muon_dimension_numbers,
    )
  if name == "sgd":
    return optax.chain(
      optax.add_decayed_weights(wd, decay_mask), optax.sgd(schedule)
    )
  raise ValueError(
    f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}"
  )


def make_optimizer(
  config: TrainConfig,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(`build_optimizer` of `config.optimizer`, its learning-rate schedule)."""
  schedule = make_schedule(
    config.lr, config.steps, config.warmup, config.final_lr_fraction
  )
  return build_optimizer(config.optimizer, schedule, config), schedule


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean token cross entropy in float32, as sum(one_hot * log_softmax).

  (optax's integer-label version gathers along the vocab axis, which fails when the
  vocab is sharded over 'tensor'.)
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  return -jnp.mean(jnp.sum(onehot * logp, axis=-1))


def microbatches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B/k, ...], microbatch j holding rows j, k + j, 2k + j, ...

  Strided rather than contiguous: a device that holds a contiguous block of
  the batch (split over data x fsdp) then holds its share of every
  microbatch, so no microbatch moves between devices.
  """
  x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def loss_and_grads(loss_fn, params, inputs, targets, grad_accum: int):
  """(mean loss, mean gradient) of `loss_fn(params, inputs, targets)` over the
  batch, computed on `grad_accum` equal microbatches in a `lax.scan`:

      loss = (1/K) sum_j loss_j,   grad = (1/K) sum_j grad_j,

  summed in float32. Equal to one pass over the whole batch (the loss is a
  mean over equal-size microbatches) up to float rounding, with the
  activations of one microbatch alive at a time.
  """
  grad_fn = jax.value_and_grad(loss_fn)
  if grad_accum == 1:
    return grad_fn(params, inputs, targets)

  def accumulate(carry, batch):
    loss, grads = grad_fn(params, *batch)
    total_loss, total = carry
    total = jax.tree.map(lambda t, g: t + g.astype(jnp.float32), total, grads)
    return (total_loss + loss.astype(jnp.float32), total), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  batches = (
    microbatches(inputs, grad_accum),
    microbatches(targets, grad_accum),
  )
  (loss, grads), _ = jax.lax.scan(
    accumulate, (jnp.zeros((), jnp.float32), zeros), batches
  )
  grads = jax.tree.map(
    lambda g, p: (g / grad_accum).astype(p.dtype), grads, params
  )
  return loss / grad_accum, grads


def train_step(
  state: dict,
  inputs,
  targets,
  *,
  graphdef,
  tx,
  grad_clip: float,
  grad_accum: int = 1,
  nan_step: int | None = None,
):
  """One update of `state` = {params (a pure dict), opt_state, step, rng}
  from the batch (inputs, targets), in `grad_accum` microbatches.

  Returns the new state and {loss, grad_norm} of this step (the norm before clipping).
  """

  def loss_fn(params, inputs, targets):
    loss = cross_entropy(nnx.merge(graphdef, params)(inputs), targets)
    if nan_step is not None:
      loss = jnp.where(state["step"] == nan_step, jnp.nan, loss)
    return loss

  loss, grads = loss_and_grads(
    loss_fn, state["params"], inputs, targets, grad_accum
  )
  grad_norm = jnp.sqrt(
    sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
  )
  if grad_clip:
    grads = jax.tree.map(
      lambda g: g * jnp.minimum(1.0, grad_clip / (grad_norm + 1e-6)), grads
    )
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = dict(
    state, params=params, opt_state=opt_state, step=state["step"] + 1
  )
  return new_state, {"loss": loss, "grad_norm": grad_norm}


def make_train_step(
  graphdef,
  tx,
  state_shardings,
  batch_sharding,
  *,
  grad_clip: float,
  grad_accum: int = 1,
  nan_step: int | None = None,
):
  """`train_step`, jitted: the state is donated and stays on `state_shardings`."""
  step = functools.partial(
    train_step,
    graphdef=graphdef,
    tx=tx,
    grad_clip=grad_clip,
    grad_accum=grad_accum,
    nan_step=nan_step,
  )
  return jax.jit(
    step,
    in_shardings=(state_shardings, batch_sharding, batch_sharding),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )


def jitted_train_step(config: TrainConfig, model_config, mesh, tx):
  """(train.py's jitted step for `config` on `mesh`, the abstract train state
  it takes): what benchmarks lower, compile and time, built from shapes."""
  state, shardings = abstract_train_state(model_config, tx, mesh)
  step = make_train_step(
    nnx.graphdef(abstract_model(model_config)),
    tx,
    shardings,
    meshlib.batch_sharding(mesh),
    grad_clip=config.grad_clip,
    grad_accum=config.grad_accum,
    nan_step=config.inject_nan_at,
  )
  return step, state


def make_eval_step(graphdef, params_shardings, batch_sharding):
  """Jitted (params, inputs, targets) -> mean token cross entropy."""

  def eval_step(params, inputs, targets):
    return cross_entropy(nnx.merge(graphdef, params)(inputs), targets)

  return jax.jit(
    eval_step, in_shardings=(params_shardings, batch_sharding, batch_sharding)
  )


def evaluate(eval_step, params, batches) -> float:
  """Mean validation loss over `batches`, a list of equal-size (inputs, targets)."""
  return sum(float(eval_step(params, x, y)) for x, y in batches) / len(batches)


# ------------------------------------------------------------------ building the run


def model_config(args, tokenizer=None):
  """The config of --model with the compute dtype resolved and the tokenizer's
  vocab (`tokenizer=None`: the config's own vocab, e.g. LLaMA's 32000)."""
  base = get_config(args.model)
  dtype = args.dtype
  if dtype == "auto":
    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  overrides = {
    "dtype": jnp.dtype(dtype).type,
    "attention": args.attention,
    "remat": args.remat,
    "scan_layers": args.scan_layers,
  }
  if tokenizer is not None and tokenizer.vocab_size != base.vocab_size:
    # Rounded up so that a vocab like GPT-2's 50257 still splits over 'tensor'.
    overrides["vocab_size"] = -(-tokenizer.vocab_size // 128) * 128
  if args.d_model is not None:
    # Width scaling: same depth and head size; heads and d_ff grow with d_model.
    if args.d_model % base.head_dim:
      raise ValueError(
        f"--d-model {args.d_model} is not a multiple of model {args.model}'s "
        f"head size {base.head_dim}"
      )
    heads = args.d_model // base.head_dim
    overrides.update(
      d_model=args.d_model,
      n_heads=heads,
      n_kv_heads=base.n_kv_heads and heads * base.n_kv_heads // base.n_heads,
      d_ff=base.d_ff * args.d_model // base.d_model,
    )
  config = get_config(args.model, **overrides)
  if args.seq_len > config.max_seq_len:
    raise ValueError(
      f"--seq-len {args.seq_len} is longer than model {args.model}'s "
      f"context of {config.max_seq_len} tokens"
    )
  return config


def optimizer_state_kind(args) -> dict:
  """The flags that change what the optimizer state holds (empty for the
  defaults, so older records still match): a checkpoint restores only into
  the same kind of state."""
  kind = {}
  if args.optimizer == "sinkgd" and args.warm_start:
    kind["warm_start"] = True
  if args.optimizer in ("sinkgd", "swan") and args.momentum is not None:
    kind["momentum_order"] = args.momentum_order
  return kind


def run_record(args, config, tokenizer) -> dict:
  """What a checkpoint records about its run. Resuming needs the same model (how
  it computes aside), parameter layout, tokenizer, optimizer, batch size and
  sequence length; other flags may change (with a note)."""
  how = ("dtype", "attention", "remat", "scan_layers")
  model = {
    k: getattr(v, "__name__", v)
    for k, v in dataclasses.asdict(config).items()
    if k not in how
  }
  return {
    "model": {"name": args.model, **model},
    "layout": LAYOUTS[config.scan_layers],
    "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size},
    # A rule other than the paper's, a warm start or a momentum buffer changes
    # the optimizer state's tree, so a resume across them is refused; the
    # defaults add nothing, as in older records.
    "optimizer": {"name": args.optimizer, **optimizer_state_kind(args)}
    | (
      {} if args.update_scale == "rms" else {"update_scale": args.update_scale}
    ),
    # The batch of step s is cut from the corpus by (seed, s, batch, seq_len).
    "data": {"--batch-size": args.batch_size, "--seq-len": args.seq_len},
    "args": {
      k: v
      for k, v in vars(args).items()
      if k not in ("coordinator", "process_id", "no_progress", "cpu_devices")
    }
    | library_defaults(args),
  }


def library_defaults(args) -> dict:
  """Flags left at None ("the library's default"), recorded as that default.

  A resume under a library whose default has changed (SWAN's whitening became
  ``fast``) then says so in its note of changed flags instead of silently
  continuing with another algorithm.
  """
  if args.optimizer == "swan" and args.swan_whiten is None:
    return {"swan_whiten": mo.normalizers.DEFAULT_WHITEN_MODE}
  return {}


def load_data(args, tokenizer):
  """(corpus, BatchSampler, this process's validation batches); errors as ValueError."""
  try:
    corpus = load_corpus(
      args.data,
      tokenizer,
      seed=args.seed,
      max_tokens=args.steps * args.batch_size * args.seq_len,
    )
  except RuntimeError as e:  # a missing optional package, a failed stream
    raise ValueError(str(e)) from None
  sampler = BatchSampler(
    corpus.train,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    seed=args.seed,
  )
  if args.steps > sampler.max_steps:
    raise ValueError(
      f"--steps {args.steps} of {args.batch_size} x {args.seq_len} tokens need more "
      f"than the {len(corpus.train)} training tokens of {args.data or 'stdlib'} "
      f"(one epoch is {sampler.max_steps} steps)"
    )
  val = []
  if args.eval_batches and len(corpus.val) > args.seq_len:
    val = validation_batches(
      corpus.val,
      batch_size=args.batch_size,
      seq_len=args.seq_len,
      max_batches=args.eval_batches,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  return corpus, sampler, val


def build_mesh(args, config) -> jax.sharding.Mesh:
  """The --mesh over the devices in use, checked against the batch. A model
  dimension that the mesh does not divide is replicated (`unsplit_dims` says
  which)."""
  devices = jax.devices()
  if args.devices is not None:
    if jax.process_count() > 1 or not 1 <= args.devices <= len(devices):
      raise ValueError(
        f"--devices {args.devices}: {len(devices)} devices available "
        f"(and --devices is for a single process)"
      )
    devices = devices[: args.devices]
  mesh = meshlib.make_mesh(meshlib.parse_mesh(args.mesh, len(devices)), devices)
  meshlib.check_batch_fits(
    mesh, args.batch_size, jax.process_count(), args.grad_accum
  )
  return mesh


def state_shardings(params, tx, mesh) -> dict:
  """Shardings of the train state {params, opt_state, step, rng}: optimizer
  state sharded like the params it copies, the rest replicated. `params` may
  be concrete or `abstract_params(config, mesh)`."""
  replicated = meshlib.replicated(mesh)
  return {
    "params": jax.tree.map(lambda x: x.sharding, params),
    "opt_state": meshlib.shardings_like_params(
      jax.eval_shape(tx.init, params), params, replicated
    ),
    "step": replicated,
    "rng": replicated,
  }


def abstract_train_state(config, tx, mesh) -> tuple[dict, dict]:
  """(state, shardings) as `jax.ShapeDtypeStruct`s carrying their shardings:
  what `init_state` makes, with nothing allocated (for `jit(...).lower`)."""
  params = abstract_params(config, mesh)
  shardings = state_shardings(params, tx, mesh)
  shapes = {
    "params": params,
    "opt_state": jax.eval_shape(tx.init, params),
    "step": jax.ShapeDtypeStruct((), jnp.int32),
    "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
  }
  state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    shapes,
    shardings,
  )
  return state, shardings


def init_state(model, tx, mesh, seed: int):
  """(state, shardings) at step 0: the model's sharded params, optimizer state sharded
  like them, and the run's base PRNG key (the model has no dropout yet; anything
  random should fold in the step, so a resumed run draws the same numbers)."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  replicated = meshlib.replicated(mesh)
  shardings = state_shardings(params, tx, mesh)
  opt_shardings = shardings["opt_state"]
  state = {
    "params": params,
    "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
    "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
    "rng": jax.device_put(
      jax.random.key_data(jax.random.key(seed)), replicated
    ),
  }
  return state, shardings


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(
    jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])
  )


def _describe(args, config, mesh, corpus) -> str:
  return (
    f"model {args.model} ({count_params(config) / 1e6:.2f}M params, "
    f"{config.dtype.__name__} compute) | optimizer {args.optimizer}, lr {args.lr:g}"
    f" | mesh {meshlib.format_mesh(dict(mesh.shape))} over {mesh.devices.size} "
    f"{mesh.devices.flat[0].platform} device(s), {jax.process_count()} process(es)\n"
    f"data {corpus.description}\n"
    f"{args.steps} steps of {args.batch_size} x {args.seq_len} tokens"
    + (f" in {args.grad_accum} microbatches" if args.grad_accum > 1 else "")
    + f" | attention {attention_impl(config.attention, config.dtype, config.head_dim)}"
    + f", remat {config.remat}, layers "
    + ("scanned" if config.scan_layers else "unrolled")
  )


def _closing_line(s: dict) -> str:
  line = f"done: {s['steps']} steps, {s['tokens'] / 1e6:.2f}M tokens, {s['time_s']:.0f}s"
  if s["tokens_per_s"]:
    line += (
      f" ({s['tokens_per_s']:,.0f} tokens/s, "
      f"{s['tokens_per_s_per_device']:,.0f} per device, MFU "
      + ("n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%")
      + ")"
    )
  if s["peak_memory_bytes"] is not None:
    line += f" | peak memory {s['peak_memory_bytes'] / 2**30:.2f} GiB/device"
  if s["final_train_loss"] is not None:
    line += f" | train loss {s['final_train_loss']:.4f} (last 10 steps)"
  if s["final_val_loss"] is not None:
    line += (
      f" | val loss {s['final_val_loss']:.4f}, ppl {s['final_val_ppl']:.2f}"
    )
  if s["ckpt_dir"]:
    line += f" | checkpoints: {s['ckpt_dir']}"
  if s["metrics"]:
    line += f" | metrics: {s['metrics']}"
  return line


def _last_good(ckpt) -> str:
  if ckpt is None or ckpt.latest_step is None:
    return "No checkpoint was saved."
  return f"Last good checkpoint: {os.path.join(ckpt.directory, str(ckpt.latest_step))}"


# ------------------------------------------------------------------ the run


def train(args) -> dict:
  """Runs training as `args` (from `parse_args`) says; returns the summary.

  The summary holds the final train/val loss and perplexity, token and time totals,
  `history` (one {step, loss, lr, grad_norm, time_s} per step of this run) and
  `evals`. Raises ValueError for bad input, before anything is written, and
  NonFiniteLossError when training diverges (the bad state is never saved).
  """
  setup_runtime(args)
  ckpt_dir = args.ckpt_dir or os.path.join(args.run_dir, "ckpt")
  metrics_path = args.metrics or os.path.join(args.run_dir, "metrics.jsonl")
  metrics_path = (
    None if metrics_path == "none" else os.path.abspath(metrics_path)
  )
  tensorboard_dir = None
  if args.tensorboard:
    if importlib.util.find_spec("tensorboardX") is None:
      raise ValueError(
        "--tensorboard needs the tensorboardX package: pip install -e '.[train]'"
      )
    beside = os.path.dirname(metrics_path) if metrics_path else args.run_dir
    tensorboard_dir = os.path.join(beside, "tensorboard")

  # Every input is checked before anything is built or written.
  try:
    tokenizer = load_tokenizer(args.tokenizer)
  except RuntimeError as e:  # a missing optional package
    raise ValueError(str(e)) from None
  config = model_config(args, tokenizer)
  ckpt = None
  if args.ckpt_every:
    check_writable_dir(ckpt_dir, "--ckpt-dir")
  if (
    args.ckpt_every or args.resume
  ):  # --resume --ckpt-every 0: restore, never save
    ckpt = Checkpoints(
      ckpt_dir,
      run_record(args, config, tokenizer),
      resume=args.resume,
      keep=args.keep,
    )
    if (ckpt.latest_step or 0) > args.steps:
      raise ValueError(
        f"{ckpt_dir} holds step {ckpt.latest_step}, past --steps {args.steps}"
      )
  if metrics_path is not None and jax.process_index() == 0:
    check_metrics_file(
      metrics_path,
      start=(ckpt.latest_step or 0) if ckpt else 0,
      resume=args.resume,
    )
  corpus, sampler, val_batches = load_data(args, tokenizer)
  mesh = build_mesh(args, config)

  model = create_sharded_model(config, mesh, seed=args.seed)
  graphdef = nnx.graphdef(model)
  tx, schedule = make_optimizer(args)
  state, shardings = init_state(model, tx, mesh, args.seed)
  del model
  start = 0
  if ckpt is not None:
    ckpt.open()
    if ckpt.latest_step is not None:
      state = ckpt.restore(
        jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          state,
          shardings,
        )
      )
      start = int(state["step"])

  bs, T = args.batch_size, args.seq_len
  log = RunLog(
    metrics_path,
    start=start,
    steps=args.steps,
    tokens_per_step=bs * T,
    log_every=args.log_every,
    enabled=jax.process_index() == 0,
    progress=not args.no_progress,
    tensorboard=tensorboard_dir,
    flops_per_token=flops_per_token(config, T),
    peak_flops=peak_flops(mesh.devices.flat[0]),
    devices=mesh.devices.flat,
  )
  for note in [*(ckpt.notes if ckpt else ()), *unsplit_dims(config, mesh)]:
    log.print(f"note: {note}")
  log.print(_describe(args, config, mesh, corpus))
  if start:
    log.print(f"resumed from {ckpt.directory}/{start}")
  to_global = functools.partial(meshlib.global_batch, mesh, global_rows=bs)
  val = [(to_global(x), to_global(y)) for x, y in val_batches]
  save_every = args.ckpt_every if ckpt is not None else 0
  process = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
  }
  batch_sharding = meshlib.batch_sharding(mesh)
  step_fn = make_train_step(
    graphdef,
    tx,
    shardings,
    batch_sharding,
    grad_clip=args.grad_clip,
    grad_accum=args.grad_accum,
    nan_step=args.inject_nan_at,
  )
  eval_fn = make_eval_step(graphdef, shardings["params"], batch_sharding)
  # The lr of every step, on the host: logging it never waits on the device.
  lrs = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(args.steps)))

  def load(step):
    inputs, targets = sampler.batch(step, **process)
    return to_global(inputs), to_global(targets)

  def report(step, out):
    """Logs `step` from its metrics (waiting for that step only); stops the run
    on a non-finite loss or gradient."""
    loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      raise NonFiniteLossError(
        f"loss is {loss} (gradient norm {grad_norm}) at step {step}; "
        f"stopped. {_last_good(ckpt)}",
        log.summary(),
      )
    log.train_step(step, loss=loss, grad_norm=grad_norm, lr=float(lrs[step]))

  try:
    with jax.set_mesh(mesh):  # the model pins activation shardings to this mesh
      # The host runs one step ahead of the device: it dispatches step s, puts
      # batch s + 1 on the devices and only then reads step s - 1's metrics.
      pending = None  # (step, metrics) dispatched, not yet read
      batch = load(start) if start < args.steps else None
      for step in range(start, args.steps):
        state, out = step_fn(state, *batch)
        if step + 1 < args.steps:
          batch = load(step + 1)
        if pending is not None:
          report(*pending)
        pending = (step, out)
        done = step + 1
        evaluating = (
          val
          and args.eval_every
          and done % args.eval_every == 0
          and done < args.steps
        )
        saving = save_every and (done % save_every == 0 or done == args.steps)
        if evaluating or saving or done == args.steps:
          # Never evaluate or save a state whose loss has not been checked.
          report(*pending)
          pending = None
        if evaluating:
          log.eval(done, evaluate(eval_fn, state["params"], val))
        if saving:
          if not _all_finite(state["params"]):
            raise NonFiniteLossError(
              f"parameters are not finite after step {step}; stopped without "
              f"saving. {_last_good(ckpt)}",
              log.summary(),
            )
          ckpt.save(done, state)
      if val:
        log.eval(args.steps, evaluate(eval_fn, state["params"], val))
  finally:
    log.close()
    if ckpt is not None:
      ckpt.close()  # waits for the last save to be committed

  summary = {
    "model": args.model,
    "optimizer": args.optimizer,
    "lr": args.lr,
    "steps": args.steps,
    "start_step": start,
    "params": count_params(config),
    "mesh": dict(mesh.shape),
    "ckpt_dir": ckpt.directory if save_every else None,
    "metrics": metrics_path,
    "tensorboard": tensorboard_dir,
    **log.summary(),
  }
  log.print(_closing_line(summary))
  return summary


def main(argv=None) -> int:
  """The command line: 0 on success, 1 (2 for a bad flag) on bad input, 3 when training
  diverged, 4 (`SAVE_FAILED`) when a checkpoint could not be saved, 130 when
  interrupted."""
  try:
    args = parse_args(argv)
  except SystemExit as e:  # --help, or a flag error already printed on one line
    return int(e.code or 0)
  try:
    train(args)
  except ValueError as e:
    if os.environ.get("TRAIN_TRACEBACK"):
      raise
    print(f"train.py: error: {e}", file=sys.stderr)
    return 1
  except NonFiniteLossError as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    return 3
  except SaveError as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    return SAVE_FAILED
  except KeyboardInterrupt:
    print(
      "train.py: interrupted; saved checkpoints are kept (continue with --resume)",
      file=sys.stderr,
    )
    return 130
  return 0


if __name__ == "__main__":
  code = main()
  if code == SAVE_FAILED:
    # Orbax's writer threads of the failed save may still wait for signals that
    # will never come; they must not hold the process (and its allocation).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)
