"""pretrain/sample.py: text from a checkpoint, with the run's own tokenizer."""

import jax
import numpy as np
import pytest

from pretrain import sample
from pretrain.cli import parse_args
from pretrain.trainer import train

PHRASE = "the quick brown fox jumps over the lazy dog. "
PROMPT = "the quick brown"


@pytest.fixture(scope="module")
def memorized_run(tmp_path_factory):
  """A tiny model trained until it has memorized PHRASE, repeated."""
  tmp = tmp_path_factory.mktemp("sample")
  data = tmp / "fox.txt"
  data.write_text(PHRASE * 1500)
  run_dir = tmp / "run"
  summary = train(
    parse_args(
      [
        "--data",
        str(data),
        "--steps",
        "120",
        "--batch-size",
        "8",
        "--seq-len",
        "64",
        "--eval-batches",
        "0",
        "--ckpt-every",
        "120",
        "--no-progress",
        "--run-dir",
        str(run_dir),
      ]
    )
  )
  assert summary["final_train_loss"] < 0.1, summary["final_train_loss"]
  return run_dir


def test_greedy_sampling_reproduces_the_memorized_text(memorized_run):
  model, tok, step = sample.load_run(str(memorized_run))
  assert (step, tok.name) == (120, "byte")
  # 15 + 45 tokens: inside the 64 positions the model was trained on.
  new = sample.generate(model, tok.encode(PROMPT), 45, vocab_size=256)
  expected = (PHRASE * 2)[len(PROMPT) : len(PROMPT) + 45]
  assert tok.decode(new) == expected


def test_top_1_sampling_is_greedy_and_a_seed_repeats(memorized_run):
  model, tok, _ = sample.load_run(str(memorized_run))
  prompt = tok.encode(PROMPT)
  greedy = sample.generate(model, prompt, 20, vocab_size=256)
  key = jax.random.key(3)
  top1 = sample.generate(
    model, prompt, 20, vocab_size=256, temperature=2.0, top_k=1, key=key
  )
  np.testing.assert_array_equal(top1, greedy)
  hot = dict(vocab_size=256, temperature=5.0, top_k=50)
  a = sample.generate(model, prompt, 20, key=key, **hot)
  b = sample.generate(model, prompt, 20, key=key, **hot)
  c = sample.generate(model, prompt, 20, key=jax.random.key(4), **hot)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)  # 20 draws at temperature 5 differ


def test_cli_prints_greedy_and_samples(memorized_run, capsys):
  argv = ["--run-dir", str(memorized_run), "--prompt", PROMPT]
  argv += ["--max-new-tokens", "29", "--num-samples", "1", "--seed", "7"]
  assert sample.main(argv) == 0
  out = capsys.readouterr().out
  assert PROMPT + " fox jumps over the lazy dog." in out
  assert "--- greedy ---" in out and "--- sample 1" in out


def test_cli_without_a_checkpoint_is_one_line(tmp_path, capsys):
  assert sample.main(["--run-dir", str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no complete checkpoint" in err, err
