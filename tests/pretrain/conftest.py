"""Fixtures shared by the pretrain tests: each training run they share happens
once per test session (per xdist worker).
"""

from __future__ import annotations

import pytest

from tests.pretrain.runs import run


@pytest.fixture(scope="session")
def fsdp8(tmp_path_factory):
  """fsdp=8 with checkpoints at steps 3 and 6, an eval at 3 and 6, and metrics."""
  tmp = tmp_path_factory.mktemp("fsdp8")
  summary = run(
    tmp,
    "--mesh",
    "fsdp=8",
    "--ckpt-every",
    "3",
    "--keep",
    "0",
    "--eval-batches",
    "1",
    "--eval-every",
    "3",
  )
  return summary, tmp
