"""benchmarks/gpu_suite.sh refuses, in one line and before doing anything, where
there is no GPU (this test's machine): with no nvidia-smi, and with an
nvidia-smi that finds a GPU JAX cannot see."""

import os
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.sh"


def _run(tmp_path, env_path):
  env = dict(os.environ, PATH=env_path, PYTHON=sys.executable)
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
    [str(SUITE), str(tmp_path / "out")],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_gpu_suite_is_executable_and_refuses_without_nvidia_smi(tmp_path):
  assert os.access(SUITE, os.X_OK)
  empty = tmp_path / "bin"
  empty.mkdir()
  # Only the basic tools; no nvidia-smi.
  result = _run(tmp_path, f"{empty}:/usr/bin:/bin")
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and "no GPU" in result.stderr
  assert result.stdout == ""
  assert not (tmp_path / "out").exists()  # nothing was run or written


def test_gpu_suite_refuses_when_jax_sees_no_gpu(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  smi = fake / "nvidia-smi"
  smi.write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
  smi.chmod(0o755)
  result = _run(tmp_path, f"{fake}:{os.environ['PATH']}")
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1
  assert "no GPU visible to JAX" in result.stderr
  assert not (tmp_path / "out").exists()


def test_gpu_suite_without_an_output_folder_prints_its_usage(tmp_path):
  result = subprocess.run(
    [str(SUITE)], capture_output=True, text=True, timeout=30
  )
  assert result.returncode == 2 and "usage:" in result.stderr
