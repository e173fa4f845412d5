"""What a run runs on: JAX's start-up (simulated devices, multi-process), the
model config the flags describe, and the device mesh.

Everything here must happen before, or decides, what is built: `setup_runtime`
precedes any JAX op; `model_config` and `build_mesh` refuse what does not fit
(a width the head size does not divide, a sequence longer than the context, a
batch the mesh does not split) in one `ValueError` line.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models.llama import get_config
from pretrain import mesh as meshlib


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
