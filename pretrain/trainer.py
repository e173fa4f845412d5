"""The run: check every input, restore or init, then step / evaluate / save.

    summary = train(TrainConfig(steps=100))

The loop: build the mesh -> build the model and optimizer state sharded on it
-> restore the latest checkpoint or start at step 0 -> for each step: batch ->
train_step -> log, evaluate, checkpoint. The batch of a step is a pure function
of (seed, step), so the step is the data position and a resumed run replays
exactly what an uninterrupted one would have done.

Outputs, under `run_dir` (default runs/default): orbax checkpoints in
`ckpt/<step>/` and `metrics.jsonl` (see pretrain/metrics.py). A directory
that already holds checkpoints is never overwritten: continue it with
`resume=True` or pick another. One run at a time writes them: the run holds
a lock on them (pretrain/lock.py) from before it writes anything.

On SIGTERM or SIGINT the loop finishes the step it is in, saves it and
raises `Stopped` (pretrain/preemption.py); `resume=True` continues from there,
or from step 0 when the run never saved a checkpoint.

Multi-host: one process per host with `coordinator`, `num_processes`,
`process_id`. Each process loads only its rows of the global batch; process 0
prints and writes metrics; every process writes its shards of the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
from typing import TypedDict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.llama import (
  LlamaConfig,
  attention_impl,
  count_params,
  create_sharded_model,
  unsplit_dims,
)
from pretrain import mesh as meshlib
from pretrain.checkpoint import Checkpoints, complete_steps
from pretrain.config import TrainConfig
from pretrain.data import BatchSampler, Corpus, load_data
from pretrain.errors import (
  InUseError,
  NonFiniteLossError,
  OutputError,
  Stopped,
)
from pretrain.flops import flops_per_token, peak_flops
from pretrain.lock import RunLocks, lock_targets
from pretrain.metrics import RunLog, check_metrics_file
from pretrain.optim import make_optimizer
from pretrain.paths import check_writable_dir
from pretrain.preemption import StopRequest, reached_sync_point
from pretrain.record import run_record
from pretrain.runtime import build_mesh, model_config, setup_runtime
from pretrain.state import all_finite, init_state
from pretrain.step import evaluate, make_eval_step, train_step_for
from pretrain.tokenizer import load_tokenizer


class RunSummary(TypedDict):
  """What `train` returns (and its closing line prints).

  history holds one {step, loss, lr, grad_norm, time_s, ...} per step of this
  run, evals one {step, val_loss, val_ppl, time_s} per evaluation; losses are
  None when the run had no steps or no evaluation.
  """

  model: str
  optimizer: str
  lr: float
  steps: int
  start_step: int
  params: int
  mesh: dict
  ckpt_dir: str | None
  metrics: str | None
  tensorboard: str | None
  final_train_loss: float | None
  final_val_loss: float | None
  final_val_ppl: float | None
  tokens: int
  tokens_this_run: int
  time_s: float
  tokens_per_s: float | None
  tokens_per_s_per_device: float | None
  mfu: float | None
  peak_memory_bytes: int | None
  history: list
  evals: list


@dataclasses.dataclass(frozen=True)
class _Inputs:
  """What `train` has checked (and locked) before it builds anything: the
  model, checkpoints, data and mesh of the run, and where its metrics go."""

  model_cfg: LlamaConfig
  ckpt: Checkpoints | None  # None: --ckpt-every 0 without --resume
  corpus: Corpus
  sampler: BatchSampler
  val_batches: list  # this process's (inputs, targets); empty: no evaluation
  mesh: jax.sharding.Mesh
  metrics_path: str | None
  tensorboard_dir: str | None


def train(config: TrainConfig, *, prog: str = "train") -> RunSummary:
  """Runs training as `config` says; returns the summary.

  `prog` starts the lines printed when a signal arrives.

  Raises:
    ValueError: bad input, before anything is written.
    InUseError: another process holds the lock of an output.
    NonFiniteLossError: training diverged (the bad state is never saved).
    SaveError: a checkpoint could not be written.
    OutputError: the metrics could not be written.
    Stopped: SIGTERM or SIGINT stopped the run after saving its step.
  """
  setup_runtime(config)
  ckpt_dir = config.ckpt_dir or os.path.join(config.run_dir, "ckpt")
  metrics_path = config.metrics or os.path.join(config.run_dir, "metrics.jsonl")
  metrics_path = (
    None if metrics_path == "none" else os.path.abspath(metrics_path)
  )
  tensorboard_dir = None
  if config.tensorboard:
    if importlib.util.find_spec("tensorboardX") is None:
      raise ValueError(
        "--tensorboard needs the tensorboardX package: pip install -e '.[train]'"
      )
    beside = os.path.dirname(metrics_path) if metrics_path else config.run_dir
    tensorboard_dir = os.path.join(beside, "tensorboard")

  # Every input is checked before anything is built or written.
  try:
    tokenizer = load_tokenizer(config.tokenizer)
  except RuntimeError as e:  # a missing optional package
    raise ValueError(str(e)) from None
  model_cfg = model_config(config, tokenizer)
  if config.ckpt_every:
    check_writable_dir(ckpt_dir, "--ckpt-dir")
  elif not config.resume:
    ckpt_dir = None  # no checkpoint is read or written
  # Locked before the outputs are read, so that what is checked below stays
  # true while the run writes; released, with what it created, if refused.
  locks = _lock(
    lock_targets(
      config.run_dir,
      ckpt_dir,
      metrics_path,
      tensorboard_dir,
    )
  )
  try:
    inputs = _check_inputs(
      config,
      tokenizer,
      model_cfg,
      ckpt_dir,
      metrics_path,
      tensorboard_dir,
    )
  except BaseException:
    if locks is not None:
      locks.release(tidy=True)
    raise
  try:
    return _run(config, prog, inputs)
  finally:
    if locks is not None:
      locks.release()


def _lock(targets) -> RunLocks | None:
  """The run's output locks, taken by process 0 for all; every process
  raises if that failed."""
  error, locks = None, None
  if jax.process_index() == 0:
    try:
      locks = RunLocks(targets)
    except (InUseError, ValueError) as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(failed) and error is None:
      error = InUseError("process 0 could not lock the run's outputs")
  if error is not None:
    raise error
  return locks


def _check_inputs(
  config, tokenizer, model_cfg, ckpt_dir, metrics_path, tensorboard_dir
) -> _Inputs:
  """The run's inputs, each checked (checkpoints in `ckpt_dir` unless it is
  None); raises ValueError before anything is written."""
  ckpt = None
  if ckpt_dir is not None:  # --resume --ckpt-every 0: restore, never save
    ckpt = Checkpoints(
      ckpt_dir,
      run_record(config, model_cfg, tokenizer),
      resume=config.resume,
      keep=config.keep,
    )
    if (ckpt.latest_step or 0) > config.steps:
      raise ValueError(
        f"{ckpt_dir} holds step {ckpt.latest_step}, past --steps {config.steps}"
      )
  if metrics_path is not None and jax.process_index() == 0:
    check_metrics_file(
      metrics_path,
      start=(ckpt.latest_step or 0) if ckpt else 0,
      resume=config.resume,
    )
  corpus, sampler, val_batches = load_data(config, tokenizer)
  return _Inputs(
    model_cfg=model_cfg,
    ckpt=ckpt,
    corpus=corpus,
    sampler=sampler,
    val_batches=val_batches,
    mesh=build_mesh(config, model_cfg),
    metrics_path=metrics_path,
    tensorboard_dir=tensorboard_dir,
  )


def _run(config: TrainConfig, prog: str, inputs: _Inputs) -> RunSummary:
  """Restore or init, then the loop; the inputs are checked and locked."""
  model_cfg, ckpt, mesh = inputs.model_cfg, inputs.ckpt, inputs.mesh
  state, shardings, graphdef, tx, schedule = _init(config, model_cfg, mesh)
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

  bs, T = config.batch_size, config.seq_len
  log = RunLog(
    inputs.metrics_path,
    start=start,
    steps=config.steps,
    tokens_per_step=bs * T,
    log_every=config.log_every,
    enabled=jax.process_index() == 0,
    progress=not config.no_progress,
    tensorboard=inputs.tensorboard_dir,
    flops_per_token=flops_per_token(model_cfg, T),
    peak_flops=peak_flops(mesh.devices.flat[0]),
    devices=mesh.devices.flat,
  )
  notes = [*(ckpt.notes if ckpt else ()), *log.notes]
  for note in [*notes, *unsplit_dims(model_cfg, mesh)]:
    log.print(f"note: {note}")
  log.print(describe(config, model_cfg, mesh, inputs.corpus))
  if start:
    log.print(f"resumed from {ckpt.directory}/{start}")
  to_global = functools.partial(meshlib.global_batch, mesh, global_rows=bs)
  val = [(to_global(x), to_global(y)) for x, y in inputs.val_batches]
  save_every = config.ckpt_every if ckpt is not None else 0
  process = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
  }
  batch_sharding = meshlib.batch_sharding(mesh)
  step_fn = train_step_for(config, graphdef, tx, shardings, mesh)
  eval_fn = make_eval_step(graphdef, shardings["params"], batch_sharding)
  # The lr of every step, on the host: logging it never waits on the device.
  lrs = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(config.steps)))

  def load(step):
    x, y = inputs.sampler.batch(step, **process)
    return to_global(x), to_global(y)

  def report(step, out):
    """Logs `step` from its metrics (waiting for that step only); stops the run
    on a non-finite loss or gradient."""
    loss, grad_norm = float(out["loss"]), float(out["grad_norm"])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      raise NonFiniteLossError(
        f"loss is {loss} (gradient norm {grad_norm}) at step {step + 1}; "
        f"stopped. {last_good(ckpt)}",
        log.summary(),
      )
    log.train_step(step, loss=loss, grad_norm=grad_norm, lr=float(lrs[step]))

  stop = StopRequest(
    prog,
    distributed=jax.process_count() > 1,
    service=jax.config.jax_enable_preemption_service,
    reached_preemption=(
      ckpt.reached_preemption if ckpt is not None else reached_sync_point
    ),
    at_once=lambda: _kept(ckpt),
  )
  stopped_at, output_error = None, None
  # Installed until the last save is committed: a second signal during it is
  # ignored, not a KeyboardInterrupt that abandons it.
  with stop:
    try:
      with jax.set_mesh(mesh):  # the model pins activations to this mesh
        # The host runs one step ahead of the device: it dispatches step s,
        # puts batch s + 1 on the devices, then reads step s - 1's metrics.
        pending = None  # (step, metrics) dispatched, not yet read
        batch = load(start) if start < config.steps else None
        for step in range(start, config.steps):
          state, out = step_fn(state, *batch)
          if step + 1 < config.steps:
            batch = load(step + 1)
          if pending is not None:
            report(*pending)
          pending = (step, out)
          done = step + 1
          # Asked at every step (the same on every process under
          # jax.distributed); a stop at the last step just ends the run.
          stopping = stop.should_stop(done) and done < config.steps
          evaluating = (
            val
            and config.eval_every
            and done % config.eval_every == 0
            and done < config.steps
          )
          saving = save_every and (
            done % save_every == 0 or done == config.steps or stopping
          )
          if evaluating or saving or stopping or done == config.steps:
            # Never evaluate or save a state whose loss has not been checked.
            report(*pending)
            pending = None
          if evaluating:
            log.eval(done, evaluate(eval_fn, state["params"], val))
          if saving:
            if not all_finite(state["params"]):
              raise NonFiniteLossError(
                f"parameters are not finite after step {done}; stopped "
                f"without saving. {last_good(ckpt)}",
                log.summary(),
              )
            if stopping:
              stop.saving_step = done
            ckpt.save(done, state)
          if stopping:
            stopped_at = done
            break
        if val and stopped_at is None:
          log.eval(config.steps, evaluate(eval_fn, state["params"], val))
    except OutputError as e:  # reported once the checkpoints are closed
      output_error = e
    finally:
      log.close()
      if ckpt is not None:
        ckpt.close()  # waits for the last save to be committed
  if output_error is not None:
    raise OutputError(f"{output_error}. {last_good(ckpt)}") from None

  summary = RunSummary(
    model=config.model,
    optimizer=config.optimizer,
    lr=config.lr,
    steps=config.steps,
    start_step=start,
    params=count_params(model_cfg),
    mesh=dict(mesh.shape),
    ckpt_dir=ckpt.directory if save_every else None,
    metrics=inputs.metrics_path,
    tensorboard=inputs.tensorboard_dir,
    **log.summary(),
  )
  if stopped_at is not None:
    saved = (
      f"saved checkpoint {ckpt.directory}/{stopped_at}; continue with --resume"
      if save_every
      else "no checkpoint saved (--ckpt-every 0)"
    )
    raise Stopped(
      f"stopped by {stop.name or 'SIGTERM'} after step {stopped_at}: {saved}",
      stop.exit_code,
      summary,
    )
  log.print(closing_line(summary))
  return summary


def _init(config: TrainConfig, model_cfg, mesh):
  """(state at step 0, its shardings, the model's graphdef, the optimizer,
  its lr schedule): the model created already sharded, then dropped, so only
  the state's copy of the parameters stays alive."""
  model = create_sharded_model(model_cfg, mesh, seed=config.seed)
  graphdef = nnx.graphdef(model)
  tx, schedule = make_optimizer(config)
  state, shardings = init_state(model, tx, mesh, config.seed)
  return state, shardings, graphdef, tx, schedule


def describe(config: TrainConfig, model_cfg, mesh, corpus) -> str:
  """The run's opening lines: model, optimizer, mesh, data, shape."""
  impl = attention_impl(
    model_cfg.attention, model_cfg.dtype, model_cfg.head_dim
  )
  return (
    f"model {config.model} ({count_params(model_cfg) / 1e6:.2f}M params, "
    f"{model_cfg.dtype.__name__} compute) | optimizer {config.optimizer}, "
    f"lr {config.lr:g} | mesh {meshlib.format_mesh(dict(mesh.shape))} over "
    f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s), "
    f"{jax.process_count()} process(es)\n"
    f"data {corpus.description}\n"
    f"{config.steps} steps of {config.batch_size} x {config.seq_len} tokens"
    + (f" in {config.grad_accum} microbatches" if config.grad_accum > 1 else "")
    + f" | attention {impl}, remat {model_cfg.remat}, layers "
    + ("scanned" if model_cfg.scan_layers else "unrolled")
  )


def closing_line(s: RunSummary) -> str:
  """The run's last line: totals, rates, memory, losses and where it wrote."""
  line = (
    f"done: {s['steps']} steps, {s['tokens'] / 1e6:.2f}M tokens, "
    f"{s['time_s']:.0f}s"
  )
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


def _kept(ckpt) -> str:
  """What a run that exits at once keeps: its newest finished checkpoint."""
  if ckpt is None:
    return "no checkpoints (--ckpt-every 0)"
  steps = complete_steps(ckpt.directory)
  if not steps:
    return "no checkpoint was finished"
  return f"last finished checkpoint: {ckpt.directory}/{steps[-1]}"


def last_good(ckpt) -> str:
  """The sentence naming the run's last good checkpoint, for error lines."""
  if ckpt is None or ckpt.latest_step is None:
    return "No checkpoint was saved."
  return f"Last good checkpoint: {os.path.join(ckpt.directory, str(ckpt.latest_step))}"
