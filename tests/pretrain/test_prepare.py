"""pretrain/prepare.py: .bin memmaps that read back as the in-memory corpus."""

import json
import os
import zlib

import numpy as np
import pytest

from pretrain import prepare as prep
from pretrain.data import MAX_ID_SUFFIX, load_corpus
from pretrain.tokenizer import ByteTokenizer


class WordTokenizer:
  """Whitespace words hashed into a vocabulary too large for uint16."""

  name = "words"
  vocab_size = 70_000
  eos_id = 69_999

  def encode(self, text):
    return np.asarray(
      [zlib.crc32(w.encode()) % self.eos_id for w in text.split()], np.int64
    )

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  # 40 small files, so the split is by file and validation is not empty.
  root = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "über", "naïve"]
  for i in range(40):
    sub = root / f"part{i % 3}"
    sub.mkdir(exist_ok=True)
    text = " ".join(rng.choice(words, size=50 + i)) + "\n"
    (sub / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
  return str(root)


@pytest.mark.parametrize(
  "tokenizer, dtype",
  [(ByteTokenizer(), np.uint16), (WordTokenizer(), np.uint32)],
  ids=["byte", "words-uint32"],
)
@pytest.mark.parametrize("seed", [0, 3])
def test_prepared_bins_read_back_as_the_in_memory_corpus(
  corpus_dir, tmp_path, tokenizer, dtype, seed
):
  val_fraction = 0.2
  meta = prep.prepare(
    corpus_dir,
    tokenizer,
    tmp_path / "out",
    seed=seed,
    val_fraction=val_fraction,
    progress=False,
  )
  assert sorted(os.listdir(tmp_path / "out")) == sorted(prep.OUTPUTS)
  in_memory = load_corpus(
    corpus_dir, tokenizer, seed=seed, val_fraction=val_fraction
  )
  # What train.py --data OUT/train.bin loads (a sibling val.bin is validation).
  from_disk = load_corpus(meta["train_data"], tokenizer)
  assert from_disk.train.dtype == dtype
  np.testing.assert_array_equal(from_disk.train, in_memory.train)
  np.testing.assert_array_equal(from_disk.val, in_memory.val)
  assert len(in_memory.val) > 0 and len(in_memory.train) > len(in_memory.val)
  on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
  assert on_disk == meta
  assert (meta["train_tokens"], meta["val_tokens"]) == (
    len(in_memory.train),
    len(in_memory.val),
  )
  assert meta["dtype"] == np.dtype(dtype).name
  # Loading checked every id once and cached the largest next to each file.
  assert sorted(os.listdir(tmp_path / "out")) == sorted(
    [*prep.OUTPUTS, "train.bin" + MAX_ID_SUFFIX, "val.bin" + MAX_ID_SUFFIX]
  )


def test_chunked_tokenization_reports_every_document(corpus_dir):
  done = []
  with_progress = load_corpus(corpus_dir, WordTokenizer(), progress=done.append)
  plain = load_corpus(corpus_dir, WordTokenizer())
  assert sum(done) == 40
  np.testing.assert_array_equal(with_progress.train, plain.train)
  np.testing.assert_array_equal(with_progress.val, plain.val)


def test_prepare_refuses_to_overwrite_with_one_line(
  corpus_dir, tmp_path, capsys
):
  out = tmp_path / "out"
  argv = ["--data", corpus_dir, "--out", str(out), "--no-progress"]
  assert prep.main(argv) == 0
  assert "train with --data" in capsys.readouterr().out
  before = (out / "train.bin").read_bytes()
  assert prep.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "exists" in err and "train.bin" in err, err
  assert (out / "train.bin").read_bytes() == before


def test_prepare_refuses_a_bin_and_a_missing_source(tmp_path, capsys):
  for data in ("data/train.bin", str(tmp_path / "missing")):
    argv = ["--data", data, "--out", str(tmp_path / "o"), "--no-progress"]
    assert prep.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
  assert not (tmp_path / "o").exists()
