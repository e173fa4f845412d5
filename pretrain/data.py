"""Training data: a corpus of token ids, and the batches drawn from it.

    data spec -> documents -> token ids, split train / val -> BatchSampler -> batches

Data specs understood by `load_corpus`:

    None, "stdlib"      every *.py file of the running Python's standard library
                        (CPython 3.11: ~1.8k files, ~31M bytes). Needs no download.
    "jaxstack"          every *.py file of the installed numpy, jax, flax, optax,
                        orbax and chex packages (`pip install -e ".[train]"` has them;
                        ~1.7k files, ~28M bytes): a second offline corpus, disjoint
                        from "stdlib", to check that a result does not hang on one.
    FILE, DIR, GLOB     text files. A directory is walked recursively for common text
                        extensions (`TEXT_EXTENSIONS`), skipping hidden entries; a glob
                        takes every file it matches.
    PATH.bin[:uint32]   a pre-tokenized flat array of token ids (nanoGPT's format),
                        uint16 unless `:uint32` is appended. It is memory-mapped;
                        its ids are checked against the vocabulary once, in chunks
                        (the largest is cached in PATH.bin.max_id.json). A sibling
                        `val.bin` is the validation split.
    hf:NAME[:CONFIG]    a Hugging Face dataset (e.g. `hf:allenai/c4:en`), streamed from
                        its "train" split, field "text". Needs `datasets` and network.

The project's rule is that a run never repeats data: the validation split shares no
document with the training split, and `BatchSampler` serves each training window at
most once (stepping past one epoch is an error, not a second epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import json
import math
import os
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from pretrain.tokenizer import ByteTokenizer, Tokenizer, import_optional

TEXT_EXTENSIONS = frozenset(
  {
    ".txt",
    ".md",
    ".rst",
    ".tex",
    ".py",
    ".pyi",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".rs",
    ".go",
    ".java",
    ".js",
    ".ts",
    ".sh",
    ".json",
    ".jsonl",
    ".csv",
    ".tsv",
    ".html",
    ".xml",
    ".yaml",
    ".yml",
    ".toml",
    ".ini",
    ".cfg",
  }
)

# Joins documents when the tokenizer has no end-of-document id (ByteTokenizer).
DOCUMENT_SEPARATOR = "\n\n"

# Documents tokenized per call when streaming: big enough for batched tokenizers to
# pay off, small enough not to overshoot the token budget by much.
_STREAM_CHUNK_DOCS = 64
# Documents tokenized between two progress reports.
_PROGRESS_CHUNK_DOCS = 256


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """Token ids of one data source, split into training and validation parts.

  Attributes:
    train: 1-D token ids (uint16, or uint32 for vocabularies over 65536); may be a
      read-only memmap.
    val: 1-D token ids of the validation split, disjoint from `train` by document.
    vocab_size: ids are in [0, vocab_size).
    description: one line for logs, e.g. "stdlib: 1790 files (...), 31.5M tokens".
  """

  train: np.ndarray
  val: np.ndarray
  vocab_size: int
  description: str


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
  """The smallest unsigned dtype that holds every id below `vocab_size`."""
  return np.uint16 if vocab_size <= 2**16 else np.uint32


# ---------------------------------------------------------------- documents -> tokens


def _separator(tokenizer: Tokenizer) -> np.ndarray:
  if tokenizer.eos_id is not None:
    return np.asarray([tokenizer.eos_id], dtype=np.int64)
  return tokenizer.encode(DOCUMENT_SEPARATOR)


def tokenize_documents(
  documents: Sequence[bytes],
  tokenizer: Tokenizer,
  progress: Callable[[int], object] | None = None,
) -> np.ndarray:
  """Token ids of `documents` (raw file contents), joined by a separator.

  The separator is the tokenizer's `eos_id` if it has one, else `DOCUMENT_SEPARATOR`.
  `progress`, if given, is called with the number of documents just tokenized
  (e.g. a tqdm bar's `update`); documents are then encoded in chunks, which
  gives the same ids since each document is encoded on its own.
  """
  dtype = token_dtype(tokenizer.vocab_size)
  if isinstance(tokenizer, ByteTokenizer):
    # The bytes are the tokens: one join and one buffer view, no per-character
    # work, and files that are not valid UTF-8 keep their exact bytes.
    joined = DOCUMENT_SEPARATOR.encode().join(documents)
    if progress is not None:
      progress(len(documents))
    return np.frombuffer(joined, dtype=np.uint8).astype(dtype)
  texts = [d.decode("utf-8", errors="replace") for d in documents]
  chunk = max(1, len(texts)) if progress is None else _PROGRESS_CHUNK_DOCS
  parts = []
  for i in range(0, len(texts), chunk):
    parts.extend(tokenizer.encode_batch(texts[i : i + chunk]))
    if progress is not None:
      progress(len(texts[i : i + chunk]))
  return _join(parts, _separator(tokenizer), dtype)


def _join(
  parts: Sequence[np.ndarray], separator: np.ndarray, dtype
) -> np.ndarray:
  pieces = []
  for part in parts:
    if pieces:
      pieces.append(separator)
    pieces.append(part)
  if not pieces:
    return np.zeros(0, dtype=dtype)
  return np.concatenate(pieces).astype(dtype)


# ------------------------------------------------------------------ splits


def _unit_hash(key: str) -> float:
  digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") / 2**64


def split_files(
  names: Sequence[str], *, val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
  """Splits file names into (train, val), both sorted, sharing no name.

  A file is in validation when hash(seed, name) < val_fraction, so a file's side does
  not depend on which other files exist (a new Python patch release moves no file
  across). If that leaves validation empty, the file with the smallest hash goes
  there; training always keeps at least one file. Needs at least two names when
  `val_fraction > 0`.
  """
  names = sorted(names)
  if val_fraction == 0:
    return names, []
  if len(names) < 2:
    raise ValueError(
      f"a split by file needs at least two files, got {len(names)}"
    )
  rank = {n: _unit_hash(f"{seed}:{n}") for n in names}
  val = {n for n in names if rank[n] < val_fraction}
  if not val:
    val = {min(names, key=rank.__getitem__)}
  if len(val) == len(names):
    val.remove(max(names, key=rank.__getitem__))
  return [n for n in names if n not in val], [n for n in names if n in val]


def _split_tail(
  tokens: np.ndarray, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
  num_val = int(len(tokens) * val_fraction)
  return tokens[: len(tokens) - num_val], tokens[len(tokens) - num_val :]


def _millions(n: int) -> str:
  return f"{n / 1e6:.1f}M" if n >= 100_000 else str(n)


# ------------------------------------------------------------------ sources


def stdlib_root() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[str]:
  """Sorted paths, relative to `stdlib_root()`, of the standard library's *.py files.

  Third-party packages (site-packages, dist-packages) are left out, so the corpus
  does not change with what is pip-installed; the stdlib's own test suites are kept
  (they are ~60% of the bytes and are ordinary Python code).
  """
  root = stdlib_root()
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [
      d for d in dirnames if d not in ("site-packages", "dist-packages")
    ]
    found.extend(
      os.path.join(dirpath, f) for f in filenames if f.endswith(".py")
    )
  return sorted(os.path.relpath(f, root) for f in found)


# The packages of the "jaxstack" corpus: what the [train] extra installs, each big.
JAXSTACK_PACKAGES = ("numpy", "jax", "flax", "optax", "orbax", "chex")


def jaxstack_files() -> tuple[Path, list[str]]:
  """(root, sorted *.py paths relative to it) of the `JAXSTACK_PACKAGES`.

  The root is the directory that holds the packages (site-packages); a file's name
  starts with its package, so the train/val split by name is stable across hosts.
  The content follows the installed versions (the corpus description names them).
  """
  dirs = []
  for name in JAXSTACK_PACKAGES:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
      raise ValueError(
        f"data jaxstack needs the package {name} installed "
        '(pip install -e ".[train]")'
      )
    dirs.extend(Path(d) for d in spec.submodule_search_locations)
  root = Path(os.path.commonpath([d.parent for d in dirs]))
  found = []
  for directory in dirs:
    for dirpath, dirnames, filenames in os.walk(directory):
      dirnames[:] = [d for d in dirnames if d != "__pycache__"]
      found.extend(
        os.path.join(dirpath, f) for f in filenames if f.endswith(".py")
      )
  return root, sorted(os.path.relpath(f, root) for f in found)


def _versions(packages: Sequence[str]) -> str:
  def version(name):
    try:  # orbax installs as orbax-checkpoint
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return metadata.version(f"{name}-checkpoint")

  return ", ".join(f"{p} {version(p)}" for p in packages)


def _walk_text_files(directory: str) -> list[str]:
  found = []
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    found.extend(
      os.path.join(dirpath, f)
      for f in filenames
      if not f.startswith(".")
      and os.path.splitext(f)[1].lower() in TEXT_EXTENSIONS
    )
  return found


def _corpus_from_files(
  label: str,
  root: str,
  names: Sequence[str],
  tokenizer: Tokenizer,
  *,
  val_fraction: float,
  seed: int,
  progress: Callable[[int], object] | None = None,
) -> Corpus:
  """Reads root/name for each name, splits by file (or by tail if only one file)."""

  def read(ns):
    return [data for data in (Path(root, n).read_bytes() for n in ns) if data]

  if len(names) == 1 or val_fraction == 0:
    tokens = tokenize_documents(read(names), tokenizer, progress)
    if len(tokens) == 0:
      raise ValueError(f"data {label} is empty")
    train, val = _split_tail(tokens, val_fraction)
    split = "val = tail" if len(names) == 1 else "no val"
  else:
    train_names, val_names = split_files(
      names, val_fraction=val_fraction, seed=seed
    )
    train = tokenize_documents(read(train_names), tokenizer, progress)
    val = tokenize_documents(read(val_names), tokenizer, progress)
    if len(train) == 0:
      raise ValueError(f"data {label} is empty")
    split = f"{len(train_names)} train / {len(val_names)} val"
  files = "1 file" if len(names) == 1 else f"{len(names)} files"
  return Corpus(
    train=train,
    val=val,
    vocab_size=tokenizer.vocab_size,
    description=(
      f"{label}: {files} ({split}), {_millions(len(train))} train + "
      f"{_millions(len(val))} val tokens ({tokenizer.name})"
    ),
  )


def _load_text(
  spec: str,
  tokenizer: Tokenizer,
  *,
  val_fraction: float,
  seed: int,
  progress: Callable[[int], object] | None = None,
) -> Corpus:
  if any(c in spec for c in "*?["):
    files = set()
    for match in glob.glob(spec, recursive=True):
      files.update(_walk_text_files(match) if os.path.isdir(match) else [match])
    if not files:
      raise ValueError(f"data glob matches no files: {spec}")
  elif os.path.isdir(spec):
    files = _walk_text_files(spec)
    if not files:
      exts = " ".join(sorted(TEXT_EXTENSIONS))
      raise ValueError(f"data directory has no text files ({exts}): {spec}")
  elif os.path.isfile(spec):
    files = [spec]
  else:
    raise ValueError(f"data not found: {spec}")
  files = [os.path.abspath(f) for f in files]
  # Names relative to a common root keep the split independent of where the data lives.
  root = os.path.commonpath([os.path.dirname(f) for f in files])
  names = [os.path.relpath(f, root) for f in files]
  return _corpus_from_files(
    spec,
    root,
    names,
    tokenizer,
    val_fraction=val_fraction,
    seed=seed,
    progress=progress,
  )


def _parse_bin(spec: str) -> tuple[str, type[np.unsignedinteger]] | None:
  """(path, dtype) if `spec` names a pre-tokenized .bin file, else None."""
  path, _, suffix = spec.rpartition(":")
  if path.endswith(".bin"):
    if suffix not in ("uint16", "uint32"):
      raise ValueError(
        f"unsupported token dtype {suffix} in {spec}: a .bin file holds "
        f"uint16 or uint32 token ids"
      )
    return path, np.dtype(suffix).type
  if spec.endswith(".bin"):
    return spec, np.uint16
  return None


def _memmap(path: str, dtype) -> np.ndarray:
  if not os.path.isfile(path):
    raise ValueError(f"data not found: {path}")
  size = os.path.getsize(path)
  itemsize = np.dtype(dtype).itemsize
  if size == 0:
    raise ValueError(f"data {path} is empty")
  if size % itemsize:
    raise ValueError(
      f"data {path} has {size} bytes, not a whole number of {np.dtype(dtype).name} ids"
    )
  return np.memmap(path, dtype=dtype, mode="r")


# Tokens read per vectorized max when a .bin file is checked: memory stays
# flat however big the file (2^24 uint16 ids are 32 MiB).
CHECK_CHUNK_TOKENS = 1 << 24
# Next to `x.bin`: the largest id of the file as of its size and mtime, so
# that checking a multi-GB file once is enough.
MAX_ID_SUFFIX = ".max_id.json"


def _scan_ids(tokens: np.ndarray, vocab_size: int) -> tuple[int, int | None]:
  """(largest id, index of the first id >= vocab_size or None), read in
  chunks of `CHECK_CHUNK_TOKENS`."""
  largest, first_bad = 0, None
  for start in range(0, len(tokens), CHECK_CHUNK_TOKENS):
    chunk = np.asarray(tokens[start : start + CHECK_CHUNK_TOKENS])
    top = int(chunk.max())
    if top >= vocab_size and first_bad is None:
      first_bad = start + int(np.argmax(chunk >= vocab_size))
    largest = max(largest, top)
  return largest, first_bad


def _cached_max_id(path: str, dtype) -> int | None:
  """The largest id recorded for `path` as it is now (size, mtime), or None."""
  st = os.stat(path)
  try:
    with open(path + MAX_ID_SUFFIX) as f:
      cached = json.load(f)
    if all(cached[k] == v for k, v in _file_key(st, dtype).items()):
      return int(cached["max_id"])
  except (OSError, ValueError, TypeError, KeyError):
    pass
  return None


def _file_key(st: os.stat_result, dtype) -> dict:
  return {
    "size": st.st_size,
    "mtime_ns": st.st_mtime_ns,
    "dtype": np.dtype(dtype).name,
  }


def _record_max_id(path: str, dtype, st: os.stat_result, max_id: int) -> None:
  """Writes the cache next to `path` (atomically); a directory that cannot be
  written just means the next run checks the file again."""
  record = {**_file_key(st, dtype), "max_id": max_id}
  tmp = f"{path}{MAX_ID_SUFFIX}.{os.getpid()}.tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(record, f)
    os.replace(tmp, path + MAX_ID_SUFFIX)
  except OSError:
    with contextlib.suppress(OSError):
      os.remove(tmp)


def check_token_ids(path: str, tokens: np.ndarray, tokenizer) -> None:
  """Raises ValueError unless every id of the .bin file `path` (memory-mapped
  as `tokens`) is below the tokenizer's vocabulary size.

  The whole file is read once, then its largest id is cached next to it
  (`MAX_ID_SUFFIX`, keyed by size, mtime and dtype); an id out of range would
  otherwise be a one-hot of zeros, a target silently counted as loss 0.
  """
  vocab = tokenizer.vocab_size
  dtype = tokens.dtype
  max_id = _cached_max_id(path, dtype)
  if max_id is not None and max_id < vocab:
    return
  st = os.stat(path)
  max_id, first_bad = _scan_ids(tokens, vocab)
  _record_max_id(path, dtype, st, max_id)
  if first_bad is not None:
    raise ValueError(
      f"data {path} holds token id {int(tokens[first_bad])} at token "
      f"{first_bad} (byte {first_bad * dtype.itemsize}), outside the "
      f"vocabulary of tokenizer {tokenizer.name!r} ({vocab}): pass the "
      f"tokenizer it was made with"
    )


def _load_bin(
  path: str, dtype, tokenizer: Tokenizer, *, val_fraction: float
) -> Corpus:
  tokens = _memmap(path, dtype)
  check_token_ids(path, tokens, tokenizer)
  val_path = os.path.join(os.path.dirname(path), "val.bin")
  if os.path.isfile(val_path) and not os.path.samefile(val_path, path):
    train, val = tokens, _memmap(val_path, dtype)
    check_token_ids(val_path, val, tokenizer)
    split = "val = val.bin"
  else:
    train, val = _split_tail(tokens, val_fraction)
    split = "val = tail"
  return Corpus(
    train=train,
    val=val,
    vocab_size=tokenizer.vocab_size,
    description=(
      f"{path} ({np.dtype(dtype).name}, {split}): {_millions(len(train))} train + "
      f"{_millions(len(val))} val tokens"
    ),
  )


def _hf_texts(
  spec: str, datasets, name: str, config: str | None
) -> Iterator[str]:
  def failure(e: Exception) -> RuntimeError:
    detail = (str(e).strip().splitlines() or [""])[0]
    return RuntimeError(
      f"could not stream data {spec} ({type(e).__name__}: {detail}); "
      "streaming needs network access"
    )

  try:
    stream = iter(
      datasets.load_dataset(name, config, split="train", streaming=True)
    )
  except Exception as e:
    raise failure(e) from None
  while True:
    try:
      record = next(stream)
    except StopIteration:
      return
    except Exception as e:
      raise failure(e) from None
    if "text" not in record:
      raise ValueError(
        f"data {spec} has no 'text' field (fields: {sorted(record)})"
      )
    yield record["text"]


def _load_hf(
  spec: str,
  tokenizer: Tokenizer,
  *,
  val_fraction: float,
  max_tokens: int | None,
  progress: Callable[[int], object] | None = None,
) -> Corpus:
  """The head of a streamed dataset: validation documents first, then training ones.

  Reads documents until validation holds ceil(val_fraction * max_tokens) tokens, then
  until training holds max_tokens + 1 (windows of T + 1 tokens with stride T need one
  extra token), and stops there: only what the run will use is materialised.
  """
  name, _, config = spec.removeprefix("hf:").partition(":")
  if not name:
    raise ValueError(
      f"data {spec!r} names no dataset: expected hf:NAME[:CONFIG]"
    )
  if max_tokens is None or max_tokens < 1:
    raise ValueError(
      f"data {spec} is a stream: pass max_tokens (the run's training token budget)"
    )
  datasets = import_optional("datasets", f"data {spec}")
  dtype = token_dtype(tokenizer.vocab_size)
  separator = _separator(tokenizer)
  val_budget = math.ceil(val_fraction * max_tokens)
  train_budget = max_tokens + 1
  val_parts, train_parts, num_val, num_train, num_docs = [], [], 0, 0, 0
  chunk = []

  def flush():
    nonlocal num_val, num_train
    ids = tokenize_documents(
      [t.encode("utf-8") for t in chunk], tokenizer, progress
    )
    # Each chunk is followed by a separator, as documents within a chunk are.
    ids = np.concatenate([ids, separator.astype(dtype)])
    if num_val < val_budget:
      val_parts.append(ids)
      num_val += len(ids)
    else:
      train_parts.append(ids)
      num_train += len(ids)
    chunk.clear()

  for text in _hf_texts(spec, datasets, name, config or None):
    chunk.append(text)
    num_docs += 1
    if len(chunk) == _STREAM_CHUNK_DOCS:
      flush()
      if num_train >= train_budget:
        break
  if chunk:
    flush()
  train = (
    np.concatenate(train_parts)[:train_budget]
    if train_parts
    else np.zeros(0, dtype)
  )
  val = np.concatenate(val_parts) if val_parts else np.zeros(0, dtype)
  if len(train) == 0:
    raise ValueError(
      f"data {spec} yielded no training tokens ({num_docs} documents)"
    )
  return Corpus(
    train=train,
    val=val,
    vocab_size=tokenizer.vocab_size,
    description=(
      f"{spec}: first {num_docs} documents, {_millions(len(train))} train + "
      f"{_millions(len(val))} val tokens ({tokenizer.name})"
    ),
  )


def load_corpus(
  data: str | os.PathLike | None,
  tokenizer: Tokenizer | None = None,
  *,
  val_fraction: float = 0.01,
  seed: int = 0,
  max_tokens: int | None = None,
  progress: Callable[[int], object] | None = None,
) -> Corpus:
  """Loads the data source `data` (see the module docstring) as token ids.

  Args:
    data: the data spec; None means "stdlib".
    tokenizer: turns text into ids (default `ByteTokenizer`). For a .bin source it
      only supplies `vocab_size`, which must exceed every id in the file.
    val_fraction: share of files (or of the tail of a single file / a .bin without a
      val.bin / of a stream's token budget) held out for validation.
    seed: picks which files go to validation.
    max_tokens: training tokens to materialise from a `hf:` stream (required there,
      ignored elsewhere: local sources are loaded whole).
    progress: called with the number of documents tokenized since its last
      call (e.g. a tqdm bar's `update`); never called for a .bin source.

  Returns:
    A `Corpus`. Loading is deterministic: the same arguments give the same arrays.

  Raises:
    ValueError: a missing path, no text files, an empty corpus, a malformed spec.
    RuntimeError: a needed optional package is missing, or a stream failed.
  """
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
  spec = "stdlib" if data is None else os.fspath(data)
  if spec == "stdlib":
    return _corpus_from_files(
      "stdlib",
      str(stdlib_root()),
      stdlib_files(),
      tokenizer,
      val_fraction=val_fraction,
      seed=seed,
      progress=progress,
    )
  if spec == "jaxstack":
    root, names = jaxstack_files()
    return _corpus_from_files(
      f"jaxstack ({_versions(JAXSTACK_PACKAGES)})",
      str(root),
      names,
      tokenizer,
      val_fraction=val_fraction,
      seed=seed,
      progress=progress,
    )
  if spec.startswith("hf:"):
    return _load_hf(
      spec,
      tokenizer,
      val_fraction=val_fraction,
      max_tokens=max_tokens,
      progress=progress,
    )
  if (parsed := _parse_bin(spec)) is not None:
    path, dtype = parsed
    return _load_bin(path, dtype, tokenizer, val_fraction=val_fraction)
  return _load_text(
    spec, tokenizer, val_fraction=val_fraction, seed=seed, progress=progress
  )


# ------------------------------------------------------------------ batches


def process_slice(
  batch_size: int, process_index: int, process_count: int
) -> slice:
  """The rows of a global batch that one process loads: a contiguous block."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index {process_index} is not in [0, {process_count})"
    )
  if batch_size % process_count:
    raise ValueError(
      f"batch_size {batch_size} is not divisible by process_count {process_count}"
    )
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int):
  rows = np.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])
  rows = rows.astype(np.int32)
  return rows[:, :-1], rows[:, 1:]


def _num_windows(tokens: np.ndarray, seq_len: int) -> int:
  # Window i covers tokens [i*T, i*T + T]: inputs of different windows are disjoint,
  # and each token is predicted at most once; neighbours share only a boundary token.
  return max(0, (len(tokens) - 1) // seq_len)


class BatchSampler:
  """Batches of (inputs, targets) windows from training tokens, never repeating one.

  The tokens are cut into windows of `seq_len + 1` tokens starting at multiples of
  `seq_len` (inputs = window[:-1], targets = window[1:]). A permutation of the window
  indices, drawn once from `seed`, fixes the order; the global batch at `step` is
  windows perm[step * B : (step + 1) * B]. So a batch is a pure function of
  (tokens, seed, step): resuming at step k gives bitwise the batches of an
  uninterrupted run, and no window is served twice within the `max_steps` steps of
  one epoch.
  """

  def __init__(
    self, tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int
  ):
    if batch_size < 1 or seq_len < 1:
      raise ValueError(
        f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}"
      )
    num_windows = _num_windows(tokens, seq_len)
    if num_windows == 0:
      raise ValueError(
        f"seq_len {seq_len} is longer than the training data ({len(tokens)} tokens)"
      )
    if num_windows < batch_size:
      raise ValueError(
        f"batch_size {batch_size} needs {batch_size} windows of {seq_len + 1} tokens "
        f"but the training data ({len(tokens)} tokens) holds only {num_windows}"
      )
    self.tokens = tokens
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.seed = seed
    self.num_windows = num_windows
    self._order = np.random.default_rng(seed).permutation(num_windows)

  @property
  def num_batches(self) -> int:
    """Batches in one epoch; a leftover of fewer than batch_size windows is unused."""
    return self.num_windows // self.batch_size

  @property
  def max_steps(self) -> int:
    """Steps a run may take without repeating data (= num_batches)."""
    return self.num_batches

  def batch(
    self, step: int, *, process_index: int = 0, process_count: int = 1
  ) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of the global batch for `step`.

    Returns:
      (inputs, targets), each int32 of shape (batch_size // process_count, seq_len),
      targets[:, t] = inputs[:, t + 1] within a window.
    """
    if not 0 <= step < self.num_batches:
      raise ValueError(
        f"step {step} is outside one epoch of {self.num_batches} steps "
        f"({self.batch_size} x {self.seq_len} tokens each, {len(self.tokens)} "
        "training tokens available): the run would repeat data"
      )
    rows = process_slice(self.batch_size, process_index, process_count)
    start = step * self.batch_size
    windows = self._order[start + rows.start : start + rows.stop]
    return _windows(self.tokens, windows * self.seq_len, self.seq_len)


def validation_batches(
  tokens: np.ndarray,
  *,
  batch_size: int,
  seq_len: int,
  max_batches: int,
  process_index: int = 0,
  process_count: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
  """A fixed set of validation batches: windows evenly spaced over the whole split.

  Uses min(max_batches, windows // batch_size) full batches, so the set covers the
  split evenly however small max_batches is. A split with fewer windows than one
  batch gives a single batch with its windows cycled to fill it (every row keeps the
  same shape; the estimate then weights some windows twice).

  Returns:
    A list of (inputs, targets), int32 of shape (batch_size // process_count,
    seq_len): this process's rows, as in `BatchSampler.batch`.
  """
  num_windows = _num_windows(tokens, seq_len)
  if num_windows == 0:
    raise ValueError(
      f"the validation split ({len(tokens)} tokens) is shorter than one window of "
      f"seq_len + 1 = {seq_len + 1} tokens"
    )
  if max_batches < 1:
    raise ValueError(f"max_batches must be positive, got {max_batches}")
  rows = process_slice(batch_size, process_index, process_count)
  num_batches = max(1, min(max_batches, num_windows // batch_size))
  count = num_batches * batch_size
  if count <= num_windows:
    chosen = (np.arange(count) * num_windows) // count
  else:
    chosen = np.arange(count) % num_windows
  batches = chosen.reshape(num_batches, batch_size)[:, rows]
  return [_windows(tokens, windows * seq_len, seq_len) for windows in batches]


def load_data(config, tokenizer):
  """(corpus, BatchSampler, this process's validation batches); errors as ValueError."""
  try:
    corpus = load_corpus(
      config.data,
      tokenizer,
      seed=config.seed,
      max_tokens=config.steps * config.batch_size * config.seq_len,
    )
  except RuntimeError as e:  # a missing optional package, a failed stream
    raise ValueError(str(e)) from None
  sampler = BatchSampler(
    corpus.train,
    batch_size=config.batch_size,
    seq_len=config.seq_len,
    seed=config.seed,
  )
  if config.steps > sampler.max_steps:
    raise ValueError(
      f"--steps {config.steps} of {config.batch_size} x {config.seq_len} tokens need more "
      f"than the {len(corpus.train)} training tokens of {config.data or 'stdlib'} "
      f"(one epoch is {sampler.max_steps} steps)"
    )
  val = []
  if config.eval_batches and len(corpus.val) > config.seq_len:
    val = validation_batches(
      corpus.val,
      batch_size=config.batch_size,
      seq_len=config.seq_len,
      max_batches=config.eval_batches,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  return corpus, sampler, val
