"""Tokenizers: text <-> token ids.

The default is `ByteTokenizer` (UTF-8 bytes, vocabulary 256), which needs nothing
installed and nothing downloaded. A Hugging Face `tokenizer.json` or a SentencePiece
`.model` file can be used instead; their packages are imported only when asked for
(extra `hf`: ``pip install 'multinorm-optax[hf]'``).

Every tokenizer here has the same small surface, `Tokenizer`: `name`, `vocab_size`,
`eos_id` (the id that separates documents, or None), `encode`, `encode_batch`, `decode`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

HF_EXTRA_HINT = "pip install 'multinorm-optax[hf]'"

# Names that tokenizer.json files commonly give their end-of-document token.
_EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")


class Tokenizer(Protocol):
  name: str
  vocab_size: int
  eos_id: int | None

  def encode(self, text: str) -> np.ndarray: ...

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

  def decode(self, ids) -> str: ...


def import_optional(module: str, purpose: str):
  """Imports `module`, or fails with one line saying what needs it and how to get it."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise RuntimeError(
      f"{purpose} needs the '{module}' package, which is not installed: {HF_EXTRA_HINT}"
    ) from None


class ByteTokenizer:
  """UTF-8 bytes as tokens: id = byte value, so every text round-trips exactly."""

  name = "byte"
  vocab_size = 256
  # All 256 ids are bytes, so no id is free to mark a document's end.
  eos_id = None

  def encode(self, text: str | bytes) -> np.ndarray:
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).copy()

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
      raise ValueError(
        f"byte token ids must lie in [0, 255], got {ids.min()}..{ids.max()}"
      )
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer read from a `tokenizer.json` file.

  Special tokens (e.g. LLaMA's BOS) are not added by `encode`: documents in a
  pretraining stream are separated by `eos_id` instead.
  """

  def __init__(self, path: str):
    tokenizers = import_optional("tokenizers", f"tokenizer {path}")
    self._tok = tokenizers.Tokenizer.from_file(path)
    self.name = path
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    found = (self._tok.token_to_id(t) for t in _EOS_TOKENS)
    self.eos_id = next((i for i in found if i is not None), None)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(
      self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64
    )

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).ravel()])

  def __repr__(self) -> str:
    return f"HFTokenizer({self.name!r})"


class SentencePieceTokenizer:
  """A SentencePiece model read from a `.model` file (e.g. the LLaMA-2 tokenizer)."""

  def __init__(self, path: str):
    spm = import_optional("sentencepiece", f"tokenizer {path}")
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.name = path
    self.vocab_size = int(self._sp.vocab_size())
    eos = int(self._sp.eos_id())
    self.eos_id = eos if eos >= 0 else None

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int64)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [
      np.asarray(ids, dtype=np.int64) for ids in self._sp.encode(list(texts))
    ]

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids).ravel()])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.name!r})"


def load_tokenizer(spec: str | None) -> Tokenizer:
  """The tokenizer named by `spec`.

  Args:
      spec: None or "byte" for `ByteTokenizer`; a path to a `.model` file for
          SentencePiece; a path to a `tokenizer.json` (or any other file) for Hugging Face
          `tokenizers`; a directory holding `tokenizer.json` or `tokenizer.model`.

  Raises:
      ValueError: the file does not exist.
      RuntimeError: the package the file needs is not installed.
  """
  if spec is None or spec == "byte":
    return ByteTokenizer()
  path = os.fspath(spec)
  if os.path.isdir(path):
    for candidate in ("tokenizer.json", "tokenizer.model"):
      if os.path.isfile(os.path.join(path, candidate)):
        path = os.path.join(path, candidate)
        break
    else:
      raise ValueError(
        f"tokenizer directory has no tokenizer.json or tokenizer.model: {path}"
      )
  if not os.path.isfile(path):
    raise ValueError(f"tokenizer file not found: {path}")
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  return HFTokenizer(path)
