"""benchmarks/gpu_suite.sh and its summary: refusals where there is no GPU,
a part killed at its limit keeps what it finished and is marked cut, and the
bundle is three files whatever happened. (The whole dry run is CI's step,
not a test: .ci/run.)"""

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from benchmarks import common, gpu_suite_report

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
BUNDLE = {"suite.tgz", "suite.md", "suite.json"}


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "OUT"}
  return dict(env, PYTHON=sys.executable, JAX_PLATFORMS="cpu", **extra)


def _suite(args, env, timeout=120):
  return subprocess.run(
    [str(SUITE), *args], env=env, capture_output=True, text=True,
    timeout=timeout,
  )  # fmt: skip


def test_gpu_suite_is_executable_and_refuses_without_nvidia_smi(tmp_path):
  assert os.access(SUITE, os.X_OK)
  empty = tmp_path / "bin"
  empty.mkdir()
  # Only the basic tools and python; no nvidia-smi.
  result = _suite([str(tmp_path / "out")], _env(PATH=f"{empty}:/usr/bin:/bin"))
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and "no GPU" in result.stderr
  assert result.stdout == ""
  assert not (tmp_path / "out").exists()  # nothing was run or written


def test_gpu_suite_says_why_jax_sees_no_gpu(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  smi = fake / "nvidia-smi"
  smi.write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
  smi.chmod(0o755)
  result = _suite(
    [str(tmp_path / "out")], _env(PATH=f"{fake}:{os.environ['PATH']}")
  )
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1
  # JAX's own answer is in the line: it sees a CPU.
  assert "no GPU visible to JAX: it sees cpu" in result.stderr
  assert not (tmp_path / "out").exists()
  # A python that cannot import jax says so too.
  broken = _env(PATH=f"{fake}:{os.environ['PATH']}", PYTHONPATH=str(fake))
  broken["PYTHON"] = "/usr/bin/false"
  result = _suite([str(tmp_path / "out")], broken)
  assert result.returncode == 2 and "no GPU visible to JAX" in result.stderr


def test_gpu_suite_without_an_output_folder_prints_its_usage():
  result = _suite([], _env())
  assert result.returncode == 2 and "usage:" in result.stderr


def test_a_part_at_its_limit_is_cut_and_the_bundle_is_still_three_files(
  tmp_path,
):
  out = tmp_path / "out"
  env = _env(SUITE_PARTS="step_cost", SUITE_LIMITS="step_cost=1")
  result = _suite(["--dry-run", str(out)], env)
  assert result.returncode == 1, result.stdout + result.stderr
  assert {p.name for p in out.iterdir()} == BUNDLE
  suite = json.loads((out / "suite.json").read_text())
  [part] = suite["parts"]
  assert part["part"] == "step_cost" and part["cut"] and part["limit_s"] == 1
  assert suite["dry_run"] and suite["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"]
  assert "Cut at their limit: step_cost" in (out / "suite.md").read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_part_killed_mid_run_keeps_its_finished_cases(tmp_path, signum):
  """SIGINT, as `timeout --signal=INT` sends at a part's limit (or SIGTERM,
  a scheduler's), once the first case is recorded: the process ends at once
  with 128 + the signal, the records stay, the summary tabulates them and
  marks the part cut."""
  work = tmp_path / "work"
  names = "adamw,sgd,adafactor,sinkgd_l1,sinkgd_l5,swan,muon,sinkgd_fast"
  command = [
    sys.executable, "-m", "benchmarks.step_cost", "--models", "tiny",
    "--grad-dtypes", "bfloat16", "--optimizers", names, "--repeats", "2",
    "--warmup", "1", "--no-count-passes", "--out", str(work / "step_cost"),
  ]  # fmt: skip
  records = work / "step_cost" / common.RECORDS
  start = time.monotonic()
  with subprocess.Popen(
    command, env=_env(PYTHONPATH=str(REPO)), cwd=REPO,
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
  ) as proc:  # fmt: skip
    while not any(
      r.get("kind") == "step" for r in common.read_records(records)
    ):
      assert proc.poll() is None, proc.stderr.read()
      assert time.monotonic() - start < 240
      time.sleep(0.2)
    proc.send_signal(signum)
    rc = proc.wait(timeout=60)
  assert rc == 128 + signum  # at once (common.run_as_script)
  kept = [r for r in common.read_records(records) if r["kind"] == "step"]
  assert 1 <= len(kept) < 8 and kept[0]["optimizer"] == "adamw"
  assert not (work / "step_cost" / "step_cost.md").exists()
  (work / "status.tsv").write_text(
    "step_cost\t124\t30\t30\tstep_cost\tpython3 -m benchmarks.step_cost\n"
  )
  suite = gpu_suite_report.main([str(work)])
  assert suite["parts"][0]["cut"] and suite["parts"][0]["records"] >= 2
  table = (work / "suite.md").read_text()
  assert "| step_cost | 124 | 30 | 30 | CUT |" in table
  assert "| tiny | bfloat16 | adamw |" in table


STDLIB_JSON = str(Path(sysconfig.get_paths()["stdlib"]) / "json")
# The suite's other parts at the dry run's sizes, each with more cases than
# it finishes before the signal, and how a finished case's record looks.
PARTS = {
  "throughput": (
    ["--model", "tiny", "--batch-size", "4", "--seq-len", "32",
     "--scan-layers", "--optimizers", "adamw,sinkgd,swan,muon",
     "--warmup", "1", "--windows", "3", "--steps", "1"],
    lambda r: r.get("kind") == "window",
  ),
  "attention_smoke": (
    ["--model", "tiny", "--impls", "xla,einsum,auto", "--scan-layers",
     "--batch-size", "2", "--seq-len", "32", "--steps", "2"],
    lambda r: r.get("kind") == "row",
  ),
  "convergence": (
    ["--in-process", "--model", "tiny", "--optimizers", "adamw2,sinkgd",
     "--seeds", "0", "--corpora", STDLIB_JSON, "--max-extend", "0",
     "--steps", "4", "--batch-size", "4", "--seq-len", "32",
     "--eval-every", "2", "--eval-batches", "1",
     "--lrs-adamw2", "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2",
     "--adam-lrs-adamw2", "1e-2,3e-2",
     "--lrs-sinkgd", "1e-2,3e-2,1e-1", "--adam-lrs-sinkgd", "1e-2,3e-2"],
    lambda r: "final_val_loss" in r,
  ),
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PARTS))
def test_every_part_killed_mid_run_keeps_what_it_finished(tmp_path, module):
  """The same SIGINT for each of the suite's other parts, once its first
  case is recorded: the records stay readable, the summary tabulates them
  from the module's own from_records or lists them, and marks the part cut."""
  args, finished = PARTS[module]
  work = tmp_path / "work"
  command = [
    sys.executable, "-m", f"benchmarks.{module}", *args,
    "--out", str(work / module),
  ]  # fmt: skip
  records = work / module / common.RECORDS
  start = time.monotonic()
  with subprocess.Popen(
    command, env=_env(PYTHONPATH=str(REPO)), cwd=REPO,
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
  ) as proc:  # fmt: skip
    while not any(finished(r) for r in common.read_records(records)):
      assert proc.poll() is None, proc.stderr.read()
      assert time.monotonic() - start < 240
      time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
  assert rc == 130, (
    f"{module}: exit {rc}; 0 means it finished before the signal"
  )
  kept = common.read_records(records)
  assert any(finished(r) for r in kept)
  assert not (work / module / f"{module}.md").exists()
  (work / "status.tsv").write_text(
    f"{module}\t124\t30\t30\t{module}\tpython3 -m benchmarks.{module}\n"
  )
  suite = gpu_suite_report.main([str(work)])
  [part] = suite["parts"]
  assert part["cut"] and part["records"] == len(kept)
  table = (work / "suite.md").read_text()
  assert f"| {module} | 124 | 30 | 30 | CUT |" in table
  assert "No records." not in table
