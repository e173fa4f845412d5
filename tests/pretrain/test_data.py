"""Tests for pretrain.data and pretrain.tokenizer: sources, splits, batches."""

import hashlib
import json
import os
import re
import sys
import types

import numpy as np
import pytest

from pretrain import data
from pretrain.data import (
  BatchSampler,
  load_corpus,
  process_slice,
  validation_batches,
)
from pretrain.tokenizer import ByteTokenizer, load_tokenizer

SEP = data.DOCUMENT_SEPARATOR.encode()


@pytest.fixture(scope="module")
def stdlib_corpus():
  return load_corpus(None)


def _write(path, content: bytes | str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(content.encode() if isinstance(content, str) else content)
  return str(path)


def _as_bytes(tokens) -> bytes:
  return np.asarray(tokens).astype(np.uint8).tobytes()


# ------------------------------------------------------------------ tokenizer


def test_byte_tokenizer_round_trips_non_ascii_text():
  tok = ByteTokenizer()
  text = "héllo wörld — 你好 🙂\n"
  ids = tok.encode(text)
  assert ids.dtype == np.uint8 and len(ids) == len(text.encode("utf-8"))
  assert tok.decode(ids) == text
  assert tok.decode(ids.astype(np.int32).tolist()) == text
  assert (tok.vocab_size, tok.name, tok.eos_id) == (256, "byte", None)


def test_byte_tokenizer_decode_replaces_invalid_utf8_and_rejects_large_ids():
  tok = ByteTokenizer()
  assert tok.decode([0x68, 0xFF, 0x69]) == "h\ufffdi"
  with pytest.raises(ValueError, match="256"):
    tok.decode([256])


def test_load_tokenizer_defaults_to_bytes():
  assert isinstance(load_tokenizer(None), ByteTokenizer)
  assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_load_tokenizer_missing_file_names_the_path(tmp_path):
  path = str(tmp_path / "nope" / "tokenizer.json")
  with pytest.raises(
    ValueError, match="tokenizer file not found: .*nope/tokenizer.json"
  ):
    load_tokenizer(path)


@pytest.mark.parametrize(
  "filename, module",
  [("tokenizer.json", "tokenizers"), ("tok.model", "sentencepiece")],
)
def test_load_tokenizer_without_its_package_says_how_to_install(
  tmp_path, monkeypatch, filename, module
):
  path = _write(tmp_path / filename, "{}")
  monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
  with pytest.raises(
    RuntimeError, match=rf"'{module}'.*pip install 'multinorm-optax\[hf\]'"
  ):
    load_tokenizer(path)


class _WordTokenizer:
  """A stand-in for a subword tokenizer with an end-of-document id."""

  name, vocab_size, eos_id = "words", 1000, 0

  def encode(self, text):
    return np.asarray([len(w) for w in text.split()], dtype=np.int64)

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def test_documents_are_joined_by_the_tokenizers_eos():
  ids = data.tokenize_documents(
    [b"a bb", b"ccc", "\u00e9\u00e9".encode()], _WordTokenizer()
  )
  assert ids.tolist() == [1, 2, 0, 3, 0, 2] and ids.dtype == np.uint16


# ------------------------------------------------------------------ stdlib source


def test_stdlib_corpus_has_train_and_val_tokens(stdlib_corpus):
  c = stdlib_corpus
  assert c.vocab_size == 256 and c.train.dtype == np.uint16
  assert c.train.ndim == c.val.ndim == 1
  assert len(c.train) > 1_000_000 and len(c.val) > 10_000
  assert c.description.startswith("stdlib: ")


def test_stdlib_split_shares_no_file_and_matches_the_corpus(stdlib_corpus):
  names = data.stdlib_files()
  train, val = data.split_files(names, val_fraction=0.01, seed=0)
  assert train and val
  assert not set(train) & set(val)
  assert sorted(train + val) == names
  assert not any("site-packages" in n for n in names)
  root = data.stdlib_root()
  sizes = [os.path.getsize(root / n) for n in train]
  nonempty = sum(1 for s in sizes if s)
  assert len(stdlib_corpus.train) == sum(sizes) + len(SEP) * (nonempty - 1)


def test_stdlib_corpus_loads_identically_twice(stdlib_corpus):
  again = load_corpus("stdlib")
  assert np.array_equal(again.train, stdlib_corpus.train)
  assert np.array_equal(again.val, stdlib_corpus.val)
  assert again.description == stdlib_corpus.description


def test_jaxstack_corpus_is_big_and_shares_no_file_with_stdlib():
  c = load_corpus("jaxstack")
  assert c.description.startswith("jaxstack (numpy ")
  # Far more than convergence.py's runs read (400 x 16 x 64 = 0.4M tokens).
  assert len(c.train) > 10_000_000 and len(c.val) > 50_000
  root, names = data.jaxstack_files()
  assert {n.split(os.sep)[0] for n in names} == set(data.JAXSTACK_PACKAGES)

  def digests(base, files):  # of the non-empty files: empty ones are dropped
    contents = ((base / n).read_bytes() for n in files)
    return {hashlib.sha256(c).digest() for c in contents if c}

  stdlib = digests(data.stdlib_root(), data.stdlib_files())
  assert not digests(root, names) & stdlib


def test_split_files_keeps_a_files_side_when_other_files_are_added():
  names = [f"pkg/mod_{i}.py" for i in range(500)]
  train, val = data.split_files(names, val_fraction=0.1, seed=0)
  more_train, more_val = data.split_files(
    names + ["new.py"], val_fraction=0.1, seed=0
  )
  assert set(val) <= set(more_val) and set(train) <= set(more_train)
  assert data.split_files(names, val_fraction=0.1, seed=1) != (train, val)


def test_split_files_puts_at_least_one_file_on_each_side():
  train, val = data.split_files(["a.txt", "b.txt"], val_fraction=1e-9)
  assert len(train) == len(val) == 1
  train, val = data.split_files(["a.txt", "b.txt"], val_fraction=0.999)
  assert len(train) == len(val) == 1


# ------------------------------------------------------------------ local sources


def test_text_file_is_split_by_its_tail(tmp_path):
  text = "".join(f"line {i}: ünïcode\n" for i in range(1000))
  path = _write(tmp_path / "corpus.txt", text)
  c = load_corpus(path, ByteTokenizer(), val_fraction=0.1)
  assert _as_bytes(c.train) + _as_bytes(c.val) == text.encode()
  assert len(c.val) == int(len(text.encode()) * 0.1)


def test_directory_is_split_by_file_and_skips_non_text_and_hidden(tmp_path):
  docs = {
    f"sub{i % 3}/doc{i}.md": f"document number {i}. " * 20 for i in range(40)
  }
  for name, text in docs.items():
    _write(tmp_path / "d" / name, text)
  _write(tmp_path / "d" / "image.png", b"\x89PNG")
  _write(tmp_path / "d" / ".git" / "notes.txt", "hidden")
  c = load_corpus(str(tmp_path / "d"), None, val_fraction=0.2, seed=3)
  train_docs = _as_bytes(c.train).decode().split("\n\n")
  val_docs = _as_bytes(c.val).decode().split("\n\n")
  assert sorted(train_docs + val_docs) == sorted(docs.values())
  assert not set(train_docs) & set(val_docs) and val_docs
  assert "40 files" in c.description


def test_glob_takes_the_matching_files(tmp_path):
  for i in range(10):
    _write(tmp_path / f"a{i}.txt", f"alpha {i}\n")
    _write(tmp_path / f"b{i}.txt", f"beta {i}\n")
  c = load_corpus(str(tmp_path / "a*.txt"), None, val_fraction=0.2)
  text = _as_bytes(c.train).decode() + _as_bytes(c.val).decode()
  assert "alpha" in text and "beta" not in text
  assert "10 files" in c.description


def test_bin_uses_sibling_val_bin(tmp_path):
  train = np.arange(1000, dtype=np.uint16) % 300
  val = np.arange(100, dtype=np.uint16)
  train.tofile(tmp_path / "train.bin")
  val.tofile(tmp_path / "val.bin")
  tok = types.SimpleNamespace(vocab_size=300, name="fake")
  c = load_corpus(str(tmp_path / "train.bin"), tok)
  assert np.array_equal(c.train, train) and np.array_equal(c.val, val)
  assert c.vocab_size == 300


def test_bin_uint32_suffix_without_val_bin_splits_the_tail(tmp_path):
  tokens = np.arange(1000, dtype=np.uint32) * 100
  tokens.tofile(tmp_path / "tokens.bin")
  tok = types.SimpleNamespace(vocab_size=100_000, name="fake")
  c = load_corpus(
    str(tmp_path / "tokens.bin") + ":uint32", tok, val_fraction=0.1
  )
  assert np.array_equal(np.concatenate([c.train, c.val]), tokens)
  assert len(c.val) == 100


def test_bin_with_ids_beyond_the_vocabulary_is_an_error(tmp_path):
  np.full(10, 50256, dtype=np.uint16).tofile(tmp_path / "gpt2.bin")
  with pytest.raises(ValueError, match="50256.*tokenizer"):
    load_corpus(str(tmp_path / "gpt2.bin"), ByteTokenizer())


def test_bin_with_bad_ids_only_deep_in_the_file_names_the_first_offset(
  tmp_path, monkeypatch
):
  # The file is read in chunks of 1000 ids: its bad ids sit in the fourth
  # chunk, where a check of a prefix (the first 2^24 ids before) never looks.
  monkeypatch.setattr(data, "CHECK_CHUNK_TOKENS", 1000)
  tokens = np.arange(5000, dtype=np.uint16) % 256
  tokens[3456], tokens[4000] = 300, 999
  tokens.tofile(tmp_path / "deep.bin")
  with pytest.raises(ValueError) as e:
    load_corpus(str(tmp_path / "deep.bin"), ByteTokenizer())
  message = str(e.value)
  assert "\n" not in message
  assert "holds token id 300 at token 3456 (byte 6912)" in message
  assert "'byte' (256)" in message


def test_bin_sibling_val_bin_is_checked_whole_too(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "CHECK_CHUNK_TOKENS", 100)
  (np.arange(1000, dtype=np.uint16) % 256).tofile(tmp_path / "train.bin")
  val = np.zeros(500, dtype=np.uint16)
  val[-1] = 256
  val.tofile(tmp_path / "val.bin")
  with pytest.raises(
    ValueError, match=r"val\.bin holds token id 256 at token 499"
  ):
    load_corpus(str(tmp_path / "train.bin"), ByteTokenizer())


def test_bin_check_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
  path = tmp_path / "t.bin"
  (np.arange(3000, dtype=np.uint16) % 200).tofile(path)
  load_corpus(str(path), ByteTokenizer())
  cache = json.loads((tmp_path / "t.bin.max_id.json").read_text())
  assert cache["max_id"] == 199 and cache["size"] == 6000

  def no_scan(*a):
    raise AssertionError("scanned again")

  with monkeypatch.context() as m:
    m.setattr(data, "_scan_ids", no_scan)
    load_corpus(str(path), ByteTokenizer())  # from the cache
  # Rewritten (same size, a new mtime) with a bad id: checked again.
  bad = np.arange(3000, dtype=np.uint16) % 200
  bad[2999] = 4000
  bad.tofile(path)
  os.utime(path, ns=(cache["mtime_ns"] + 10**9, cache["mtime_ns"] + 10**9))
  with pytest.raises(ValueError, match="token id 4000 at token 2999"):
    load_corpus(str(path), ByteTokenizer())


def test_bin_in_a_read_only_directory_is_checked_without_a_cache(
  tmp_path, monkeypatch
):
  path = tmp_path / "t.bin"
  (np.arange(3000, dtype=np.uint16) % 200).tofile(path)

  def read_only(*a, **k):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(os, "replace", read_only)
  c = load_corpus(str(path), ByteTokenizer())
  assert len(c.train) + len(c.val) == 3000
  assert sorted(os.listdir(tmp_path)) == ["t.bin"]


@pytest.mark.parametrize(
  "kind", ["missing", "empty_dir", "no_text_dir", "empty_file", "glob"]
)
def test_bad_sources_raise_value_error_naming_the_path(tmp_path, kind):
  if kind == "missing":
    spec = str(tmp_path / "missing.txt")
  elif kind == "empty_dir":
    spec = str(tmp_path / "empty")
    os.makedirs(spec)
  elif kind == "no_text_dir":
    spec = os.path.dirname(_write(tmp_path / "bin" / "x.png", b"\x89PNG"))
  elif kind == "empty_file":
    spec = _write(tmp_path / "empty.txt", b"")
  else:
    spec = str(tmp_path / "*.nothing")
  with pytest.raises(ValueError, match=re.escape(spec)):
    load_corpus(spec)
  with pytest.raises(ValueError, match="missing.bin"):
    load_corpus(str(tmp_path / "missing.bin"))


# ------------------------------------------------------------------ hf source


def _fake_datasets(records=None, error=None):
  def load_dataset(name, config, *, split, streaming):
    assert (split, streaming) == ("train", True)
    if error is not None:
      raise error
    return iter(records)

  return types.SimpleNamespace(load_dataset=load_dataset)


def test_hf_without_datasets_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(
    RuntimeError, match=r"'datasets'.*pip install 'multinorm-optax\[hf\]'"
  ):
    load_corpus("hf:allenai/c4:en", max_tokens=1000)


def test_hf_stream_failure_is_one_clear_line(monkeypatch):
  error = ConnectionError("Couldn't reach the Hub\nlong traceback text")
  monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(error=error))
  with pytest.raises(RuntimeError, match="hf:allenai/c4:en") as info:
    load_corpus("hf:allenai/c4:en", max_tokens=1000)
  assert "\n" not in str(info.value) and "network" in str(info.value)


def test_hf_materialises_validation_then_the_token_budget(monkeypatch):
  records = [{"text": f"doc {i:04d} " + "x" * 50} for i in range(1000)]
  monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(records))
  c = load_corpus("hf:fake", max_tokens=5000, val_fraction=0.1)
  assert len(c.train) == 5001 and len(c.val) >= 500
  val_text, train_text = _as_bytes(c.val).decode(), _as_bytes(c.train).decode()
  assert val_text.startswith("doc 0000 ") and "doc 0000" not in train_text
  with pytest.raises(ValueError, match="max_tokens"):
    load_corpus("hf:fake")


# ------------------------------------------------------------------ batches


def _sampler(n=10_000, batch_size=8, seq_len=16, seed=0):
  tokens = (np.arange(n) % 60_000).astype(np.uint16)
  return tokens, BatchSampler(
    tokens, batch_size=batch_size, seq_len=seq_len, seed=seed
  )


def test_targets_are_inputs_shifted_by_one():
  tokens, s = _sampler()
  x, y = s.batch(3)
  assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int32
  assert np.array_equal(x[:, 1:], y[:, :-1])
  for row_x, row_y in zip(x, y):  # each row is a contiguous slice of the tokens
    start = int(row_x[0])
    assert np.array_equal(row_x, tokens[start : start + 16])
    assert np.array_equal(row_y, tokens[start + 1 : start + 17])


def test_windows_never_repeat_within_an_epoch():
  tokens, s = _sampler(n=10_000, batch_size=8, seq_len=16)
  starts = np.concatenate([s.batch(i)[0][:, 0] for i in range(s.num_batches)])
  assert s.num_batches == s.max_steps == (9999 // 16) // 8
  assert len(np.unique(starts)) == len(starts) == s.num_batches * 8
  assert np.all(starts % 16 == 0)


def test_same_step_gives_bitwise_the_same_batch():
  _, s = _sampler(seed=7)
  _, resumed = _sampler(seed=7)
  for step in (0, 5, 77):
    assert all(
      np.array_equal(a, b) for a, b in zip(s.batch(step), resumed.batch(step))
    )
  _, other = _sampler(seed=8)
  assert not np.array_equal(s.batch(0)[0], other.batch(0)[0])


def test_process_slices_concatenate_to_the_global_batch():
  _, s = _sampler()
  x, y = s.batch(4)
  parts = [s.batch(4, process_index=i, process_count=2) for i in range(2)]
  assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
  assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
  with pytest.raises(ValueError, match="divisible"):
    s.batch(4, process_index=0, process_count=3)
  assert process_slice(8, 1, 4) == slice(2, 4)


def test_seq_len_longer_than_the_data_is_an_error():
  with pytest.raises(
    ValueError, match=r"seq_len 4096 is longer than the training data \(123"
  ):
    BatchSampler(np.zeros(123, np.uint16), batch_size=1, seq_len=4096, seed=0)
  with pytest.raises(ValueError, match="batch_size 64"):
    BatchSampler(np.zeros(1000, np.uint16), batch_size=64, seq_len=32, seed=0)


def test_stepping_past_the_epoch_is_an_error():
  _, s = _sampler()
  s.batch(s.num_batches - 1)
  with pytest.raises(ValueError, match="repeat data"):
    s.batch(s.num_batches)


def test_sampler_reads_a_memmap(tmp_path):
  (np.arange(5000) % 300).astype(np.uint16).tofile(tmp_path / "t.bin")
  tok = types.SimpleNamespace(vocab_size=300, name="fake")
  c = load_corpus(str(tmp_path / "t.bin"), tok)
  x, y = BatchSampler(c.train, batch_size=4, seq_len=32, seed=0).batch(0)
  assert np.array_equal(x[:, 1:], y[:, :-1]) and x.shape == (4, 32)


def test_validation_batches_are_fixed_and_do_not_overlap():
  tokens = np.arange(2000, dtype=np.uint16)
  batches = validation_batches(tokens, batch_size=4, seq_len=10, max_batches=3)
  assert len(batches) == 3
  starts = np.concatenate([x[:, 0] for x, _ in batches])
  assert len(np.unique(starts)) == 12 and np.all(starts % 10 == 0)
  assert starts.max() > 1000  # spread over the split, not just its head
  again = validation_batches(tokens, batch_size=4, seq_len=10, max_batches=3)
  assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
  x, y = batches[0]
  assert np.array_equal(x[:, 1:], y[:, :-1])
  halves = [
    validation_batches(
      tokens,
      batch_size=4,
      seq_len=10,
      max_batches=3,
      process_index=i,
      process_count=2,
    )[1][0]
    for i in range(2)
  ]
  assert np.array_equal(np.concatenate(halves), batches[1][0])


def test_validation_batches_shrink_with_a_small_split():
  tokens = np.arange(100, dtype=np.uint16)  # 9 windows of 10 + 1
  assert (
    len(validation_batches(tokens, batch_size=4, seq_len=10, max_batches=50))
    == 2
  )
  ((x, _),) = validation_batches(
    tokens[:40], batch_size=4, seq_len=10, max_batches=5
  )
  assert x.shape == (4, 10)
  with pytest.raises(ValueError, match="shorter than one window"):
    validation_batches(tokens[:10], batch_size=4, seq_len=10, max_batches=5)
