"""Print what a trained model writes: continuations of a prompt from a run's checkpoint.

    python -m pretrain.sample --run-dir runs/default --prompt "def "
    python -m pretrain.sample --run-dir runs/default --prompt "import " \\
        --temperature 0.8 --top-k 40 --num-samples 3 --seed 1

The checkpoint's run record says which model, flags and tokenizer made it; the
model is rebuilt as pretrain.trainer builds it and only its parameters are restored,
read-only (a run may still be training there). It prints the greedy
continuation, then `--num-samples` continuations drawn from
``softmax(logits / temperature)`` over the `--top-k` most likely tokens.

There is no KV cache: each new token runs the model over the last
`max_seq_len` tokens, which is fast enough at the sizes this project trains
on one host.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.llama import Llama, abstract_model, abstract_params
from pretrain.checkpoint import complete_steps, read_run_record, restore_params
from pretrain.command import OneLineParser, prog_name
from pretrain.config import TrainConfig
from pretrain.record import run_record
from pretrain.runtime import model_config
from pretrain.tokenizer import Tokenizer, load_tokenizer


def load_run(
  run_dir: str,
  *,
  ckpt_dir: str | None = None,
  step: int | None = None,
  tokenizer: str | None = None,
) -> tuple[Llama, Tokenizer, int]:
  """(model, tokenizer, step) of checkpoint `step` (default: the latest).

  `tokenizer` overrides the run record's (e.g. the file has moved); its
  vocabulary must be the run's.

  Raises:
    ValueError: no such checkpoint, or a tokenizer or model that differs from
      the run record's.
  """
  ckpt_dir = ckpt_dir or os.path.join(run_dir, "ckpt")
  steps = complete_steps(ckpt_dir)
  if not steps:
    raise ValueError(f"no complete checkpoint in {ckpt_dir}")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(
      f"{ckpt_dir} has no complete checkpoint {step} (it has {steps})"
    )
  record = read_run_record(ckpt_dir, step)
  # The record's flags as they were (not re-checked: an older version may
  # have allowed what this one refuses, and sampling changes nothing).
  args = TrainConfig()
  for key, value in record["args"].items():
    setattr(args, key, value)
  tok = load_tokenizer(tokenizer or args.tokenizer)
  saved = record["tokenizer"]
  if tok.vocab_size != saved["vocab_size"] or (
    tokenizer is None and tok.name != saved["name"]
  ):
    raise ValueError(
      f"tokenizer {tok.name} ({tok.vocab_size} ids) is not the run's "
      f"{saved['name']} ({saved['vocab_size']} ids)"
    )
  config = model_config(args, tok)
  if run_record(args, config, tok)["model"] != record["model"]:
    raise ValueError(
      f"checkpoint {ckpt_dir}/{step} was made by another model config than "
      f"this code builds for --model {args.model}"
    )
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = restore_params(
    ckpt_dir,
    step,
    jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract_params(config),
    ),
  )
  return nnx.merge(nnx.graphdef(abstract_model(config)), params), tok, step


def generate(
  model: Llama,
  prompt: np.ndarray,
  max_new_tokens: int,
  *,
  vocab_size: int,
  temperature: float = 0.0,
  top_k: int | None = None,
  key: jax.Array | None = None,
) -> np.ndarray:
  """`max_new_tokens` ids that follow `prompt` (1-D ids, not empty).

  Greedy (argmax) when `temperature` is 0; otherwise each id is drawn from
  ``softmax(logits / temperature)`` restricted to the `top_k` largest logits
  (all when None), with ``jax.random.fold_in(key, i)`` for the i-th new id.
  Ids at or above `vocab_size` (the model's padded rows) are never chosen.
  """
  prompt = np.asarray(prompt, np.int32).ravel()
  if prompt.size == 0:
    raise ValueError("the prompt is empty: give at least one token")
  if temperature < 0 or (top_k is not None and top_k < 1):
    raise ValueError(
      f"temperature must be >= 0 and top_k >= 1, got {temperature}, {top_k}"
    )
  if temperature > 0 and key is None:
    raise ValueError("sampling with temperature > 0 needs a key")
  graphdef, params = nnx.split(model)
  window = model.config.max_seq_len
  top_k = None if top_k is None else min(top_k, vocab_size)
  ids = list(prompt)
  buffer = np.zeros(window, np.int32)
  for i in range(max_new_tokens):
    context = ids[-window:]
    buffer[: len(context)] = context
    step_key = jax.random.key(0) if key is None else jax.random.fold_in(key, i)
    new = _next_id(
      params,
      buffer,
      len(context) - 1,
      step_key,
      graphdef=graphdef,
      vocab_size=vocab_size,
      temperature=float(temperature),
      top_k=top_k,
    )
    ids.append(int(new))
  return np.asarray(ids[len(prompt) :], np.int32)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "vocab_size", "temperature", "top_k")
)
def _next_id(
  params, tokens, last, key, *, graphdef, vocab_size, temperature, top_k
):
  """The id after ``tokens[: last + 1]``, chosen as :func:`generate` says."""
  # Causal attention: the logits at `last` see tokens[: last + 1] only, so the
  # zeros after it do not matter and one compiled shape serves every length.
  logits = nnx.merge(graphdef, params)(tokens[None])[0, last]
  logits = logits.astype(jnp.float32)
  logits = jnp.where(
    jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf
  )
  if temperature == 0:
    return jnp.argmax(logits)
  logits = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][-1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits)


def main(argv=None, prog: str | None = None) -> int:
  """Samples as the command line says; returns the exit status: 0, 1 on bad
  input, 2 on a bad flag. `prog` (default: as it was run) starts its lines."""
  p = OneLineParser(
    prog=prog or prog_name("pretrain.sample"),
    description=__doc__.split("\n\n")[0],
  )
  p.add_argument("--run-dir", default=os.path.join("runs", "default"))
  p.add_argument("--ckpt-dir", default=None, help="default: RUN_DIR/ckpt")
  p.add_argument("--step", type=int, default=None, help="default: the latest")
  p.add_argument("--prompt", default="\n", help="(a newline)")
  p.add_argument(
    "--max-new-tokens", type=int, default=200, help="(%(default)s)"
  )
  p.add_argument(
    "--num-samples",
    type=int,
    default=2,
    help="sampled continuations after the greedy one (%(default)s)",
  )
  p.add_argument("--temperature", type=float, default=0.8, help="(%(default)s)")
  p.add_argument("--top-k", type=int, default=40, help="(%(default)s)")
  p.add_argument("--seed", type=int, default=0, help="(%(default)s)")
  p.add_argument(
    "--tokenizer", default=None, help="default: the run record's tokenizer"
  )
  args = p.parse_args(argv)
  try:
    if args.max_new_tokens < 0 or args.num_samples < 0:
      raise ValueError("--max-new-tokens and --num-samples must be >= 0")
    model, tok, step = load_run(
      args.run_dir,
      ckpt_dir=args.ckpt_dir,
      step=args.step,
      tokenizer=args.tokenizer,
    )
    prompt = tok.encode(args.prompt)
    kw = dict(vocab_size=tok.vocab_size)
    ckpt = args.ckpt_dir or os.path.join(args.run_dir, "ckpt")
    print(f"checkpoint {ckpt}/{step}, tokenizer {tok.name}")
    print("--- greedy ---")
    print(
      args.prompt
      + tok.decode(generate(model, prompt, args.max_new_tokens, **kw))
    )
    key = jax.random.key(args.seed)
    for i in range(args.num_samples):
      print(
        f"--- sample {i + 1} (temperature {args.temperature:g}, "
        f"top-k {args.top_k}, seed {args.seed}) ---"
      )
      new = generate(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        key=jax.random.fold_in(key, i),
        **kw,
      )
      print(args.prompt + tok.decode(new))
  except (ValueError, RuntimeError) as e:
    print(f"{p.prog}: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
