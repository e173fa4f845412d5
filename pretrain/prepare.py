"""Pre-tokenize a corpus once: nanoGPT-style train.bin / val.bin memmaps.

    python -m pretrain.prepare --data 'corpus/*.txt' --tokenizer tok.json --out data/c
    python train.py --data data/c/train.bin --tokenizer tok.json

writes, in a new directory OUT:

    train.bin   the training token ids, flat, uint16 (uint32 for vocabularies
                over 65536), as `pretrain.data.load_corpus` splits them
    val.bin     the validation token ids, the same dtype
    meta.json   what was written: source, tokenizer, split, dtype, token counts,
                and the `--data` value that reads it back

The split is the one `train.py --data SOURCE --seed S` makes in memory (same
`load_corpus`, same `--seed` and validation fraction), so training on the .bin
files sees exactly the tokens it would have seen on the source, without
re-tokenizing at every start, resume and process. Existing outputs are never
overwritten.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pretrain.command import OneLineParser, prog_name
from pretrain.data import load_corpus, token_dtype
from pretrain.tokenizer import Tokenizer, load_tokenizer

OUTPUTS = ("train.bin", "val.bin", "meta.json")
# Tokens copied to disk between two progress-bar updates.
_WRITE_CHUNK = 1 << 22


def _write_bin(path: Path, tokens: np.ndarray, bar) -> None:
  """Writes `tokens` to `path` through a temporary file, so a crash leaves no
  truncated file under the final name."""
  partial = path.with_name(path.name + ".partial")
  out = np.memmap(partial, dtype=tokens.dtype, mode="w+", shape=tokens.shape)
  for start in range(0, len(tokens), _WRITE_CHUNK):
    block = tokens[start : start + _WRITE_CHUNK]
    out[start : start + len(block)] = block
    bar.update(len(block))
  out.flush()
  del out
  os.replace(partial, path)


def prepare(
  data: str | None,
  tokenizer: Tokenizer,
  out: str | os.PathLike,
  *,
  tokenizer_spec: str | None = None,
  seed: int = 0,
  val_fraction: float = 0.01,
  max_tokens: int | None = None,
  progress: bool = True,
) -> dict:
  """Tokenizes `data` with `tokenizer` into OUT/train.bin, val.bin and meta.json.

  Args:
    data: a data spec of `load_corpus` (text file, directory, glob, "stdlib",
      hf:NAME[:CONFIG]); not a .bin, which is already token ids.
    tokenizer: the tokenizer; `tokenizer_spec` is how to name it again
      (`--tokenizer`), recorded in meta.json.
    out: the output directory; created if needed, must not hold any output.
    seed, val_fraction, max_tokens: as in `load_corpus`; train.py passes its
      `--seed`, the default fraction, and its token budget for streams.
    progress: show tqdm bars while tokenizing and writing.

  Returns:
    The contents written to meta.json.

  Raises:
    ValueError: an output exists, `data` is a .bin, the validation split is
      empty, or `load_corpus` refused the source.
  """
  out = Path(out)
  for name in OUTPUTS:
    if (out / name).exists():
      raise ValueError(
        f"{out / name} exists; prepare never overwrites: remove it or choose "
        "another --out"
      )
  spec = "stdlib" if data is None else os.fspath(data)
  if spec.partition(":")[0].endswith(".bin"):
    raise ValueError(f"data {spec} is already token ids; nothing to prepare")
  with tqdm(
    desc="tokenize", unit=" docs", disable=not progress, dynamic_ncols=True
  ) as bar:
    corpus = load_corpus(
      spec,
      tokenizer,
      val_fraction=val_fraction,
      seed=seed,
      max_tokens=max_tokens,
      progress=bar.update,
    )
  if len(corpus.val) == 0:
    raise ValueError(
      f"data {spec} leaves no validation tokens (val_fraction {val_fraction}); "
      "train.py would split a tail of train.bin off instead"
    )
  dtype = token_dtype(tokenizer.vocab_size)
  out.mkdir(parents=True, exist_ok=True)
  total = len(corpus.train) + len(corpus.val)
  with tqdm(
    total=total,
    desc="write",
    unit=" tokens",
    unit_scale=True,
    disable=not progress,
    dynamic_ncols=True,
  ) as bar:
    for name, tokens in (("train.bin", corpus.train), ("val.bin", corpus.val)):
      _write_bin(out / name, np.asarray(tokens, dtype=dtype), bar)
  train_data = str(out / "train.bin")
  if dtype == np.uint32:
    train_data += ":uint32"
  meta = {
    "source": spec,
    "description": corpus.description,
    "tokenizer": {
      "name": tokenizer.name,
      "spec": tokenizer_spec,
      "vocab_size": tokenizer.vocab_size,
    },
    "split": {"seed": seed, "val_fraction": val_fraction},
    "max_tokens": max_tokens,
    "dtype": np.dtype(dtype).name,
    "train_tokens": len(corpus.train),
    "val_tokens": len(corpus.val),
    "train_data": train_data,
  }
  with open(out / "meta.json", "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  return meta


def main(argv=None, prog: str | None = None) -> int:
  """Prepares as the command line says; returns the exit status: 0, 1 on bad
  input, 2 on a bad flag. `prog` (default: as it was run) starts its lines."""
  p = OneLineParser(
    prog=prog or prog_name("pretrain.prepare"),
    description=__doc__.split("\n\n")[0],
  )
  p.add_argument(
    "--data",
    required=True,
    help="stdlib, a text file/dir/glob, or hf:NAME[:CONFIG] (as train.py)",
  )
  p.add_argument(
    "--tokenizer",
    default=None,
    help="byte (default), a tokenizer.json or a sentencepiece .model",
  )
  p.add_argument("--out", required=True, help="a new output directory")
  p.add_argument(
    "--seed",
    type=int,
    default=0,
    help="the train.py --seed whose split to write (%(default)s)",
  )
  p.add_argument(
    "--val-fraction",
    type=float,
    default=0.01,
    help="share held out for validation, as train.py (%(default)s)",
  )
  p.add_argument(
    "--max-tokens",
    type=int,
    default=None,
    help="hf: streams only: training tokens to take (train.py takes "
    "steps x batch x seq_len)",
  )
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  try:
    meta = prepare(
      args.data,
      load_tokenizer(args.tokenizer),
      args.out,
      tokenizer_spec=args.tokenizer,
      seed=args.seed,
      val_fraction=args.val_fraction,
      max_tokens=args.max_tokens,
      progress=not args.no_progress,
    )
  except (ValueError, RuntimeError, OSError) as e:
    print(f"{p.prog}: error: {e}", file=sys.stderr)
    return 1
  print(
    f"wrote {meta['train_tokens']} train + {meta['val_tokens']} val tokens "
    f"({meta['dtype']}) to {args.out}; train with --data {meta['train_data']}"
    + (f" --tokenizer {args.tokenizer}" if args.tokenizer else "")
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
