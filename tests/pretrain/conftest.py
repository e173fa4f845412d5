"""Fixtures shared by the pretrain tests: each training run they share happens
once per test session (per xdist worker).
"""

from __future__ import annotations

import pytest

from tests.pretrain.runs import FSDP8, Run, run, train_losses


@pytest.fixture(scope="session")
def fsdp8(tmp_path_factory):
  """fsdp=8 with checkpoints at steps 3 and 6, an eval at 3 and 6, and metrics."""
  tmp = tmp_path_factory.mktemp("fsdp8")
  summary = run(tmp, *FSDP8, "--ckpt-every", "3", "--keep", "0")
  return summary, tmp


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  """The losses of the run that the stopped and resumed runs must equal bit
  for bit: `python train.py` (one device), never stopped."""
  tmp = tmp_path_factory.mktemp("uninterrupted")
  done = Run(tmp, "--ckpt-every", "2")
  assert done.finish() == 0, "".join(done.err)[-2000:]
  return train_losses(tmp)
