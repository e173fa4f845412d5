"""Shared by the pretrain tests: a small real corpus, the flags of a short run,
and helpers to read what a run wrote.
"""

from __future__ import annotations

import json
import os
import sysconfig

import jax
import numpy as np

from pretrain.cli import parse_args
from pretrain.trainer import train

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# A small real corpus (the stdlib's json package: ~32k train tokens) keeps runs short.

DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")

STEPS = 6
# 6 steps of 8 x 32 tokens; no evaluation unless a test asks for it.

SMALL = [
  "--data",
  DATA,
  "--steps",
  str(STEPS),
  "--batch-size",
  "8",
  "--seq-len",
  "32",
  "--eval-batches",
  "0",
  "--log-every",
  "1",
  "--no-progress",
]


def run(tmp, *flags):
  """train in this process; returns its summary."""
  return train(parse_args(SMALL + ["--run-dir", str(tmp), *flags]))


def losses(summary):
  return np.array([h["loss"] for h in summary["history"]])


def snapshot(directory):
  """Every file under `directory` with its size and mtime: to see that nothing moved."""
  found = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      found[os.path.relpath(os.path.join(root, name), directory)] = (
        st.st_size,
        st.st_mtime_ns,
      )
  return found


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def assert_trees_close(a, b, rtol):
  """Every leaf of `a` within relative Frobenius distance `rtol` of `b`'s."""
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  ):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
    assert rel <= rtol, (jax.tree_util.keystr(path), rel)
