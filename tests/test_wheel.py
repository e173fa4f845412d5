"""The wheel as a user gets it: built, installed into a fresh venv, run by name.

One test, marked `wheel` (`pytest -m "not wheel"` skips it): it builds the wheel,
installs it with no dependencies into a new venv that sees this venv's installed
packages but not the checkout, and from a directory outside the checkout prepares
a corpus, trains 3 steps and samples through the console scripts, on relative
paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import multinorm_optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.wheel

# What the installed packages report about themselves, run inside the new venv.
_WHERE = """
import json, sys
import models, multinorm_optax, pretrain
print(json.dumps({
  "files": [m.__file__ for m in (pretrain, models, multinorm_optax)],
  "path": sys.path,
  "modules": sorted(sys.modules),
}))
"""


def _run(cmd, **kwargs):
  proc = subprocess.run(
    [str(c) for c in cmd], capture_output=True, text=True, **kwargs
  )
  assert proc.returncode == 0, (
    f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
  )
  return proc


def _inside(path, root):
  path, root = os.path.realpath(path), os.path.realpath(root)
  return os.path.commonpath([path, root]) == root


def _build_wheel(tmp_path):
  """The wheel of a copy of the checkout, so the build leaves nothing in it.

  Built in place, setuptools would write build/ and *.egg-info/ into the
  checkout, and a stale build/lib/ can ship a module that no longer exists.
  """
  src = tmp_path / "src"
  shutil.copytree(
    REPO,
    src,
    ignore=shutil.ignore_patterns(
      ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "runs", "*venv"
    ),
  )
  out = tmp_path / "dist"
  # No build isolation: setuptools comes from this venv ([test] extra), offline.
  _run(
    [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    + ["--no-build-isolation", "-w", out, src]
  )
  (wheel,) = out.glob("*.whl")
  return wheel


def _fresh_venv(tmp_path, wheel):
  """A venv holding only the wheel, plus this venv's packages for its deps."""
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", venv])
  python = venv / "bin" / "python"
  _run(
    [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    + ["--no-deps", "--no-index", wheel]
  )
  site = _run(
    [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
  ).stdout.strip()
  # A .pth line is added to sys.path as it stands: the .pth files in that
  # directory (this venv's editable install of the checkout among them) are not
  # read. Written after the install, so pip there never saw the editable one.
  ours = sysconfig.get_paths()
  dirs = dict.fromkeys([ours["purelib"], ours["platlib"]])
  with open(os.path.join(site, "_test_wheel_deps.pth"), "w") as f:
    f.write("".join(f"{d}\n" for d in dirs))
  return venv, site


def test_installed_wheel_prepares_trains_and_samples_without_a_checkout(
  tmp_path,
):
  wheel = _build_wheel(tmp_path)
  assert wheel.name == (
    f"multinorm_optax-{multinorm_optax.__version__}-py3-none-any.whl"
  )
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    info = f"multinorm_optax-{multinorm_optax.__version__}.dist-info"
    scripts = z.read(f"{info}/entry_points.txt").decode()
    metadata = z.read(f"{info}/METADATA").decode()
  for package in ("multinorm_optax", "models", "pretrain"):
    assert f"{package}/py.typed" in names
  assert f"{info}/licenses/LICENSE" in names
  assert "License-Expression: Apache-2.0" in metadata
  assert not any(
    n.startswith(("tests/", "benchmarks/", "train.py")) for n in names
  )
  for script in ("mno-train", "mno-prepare", "mno-sample"):
    assert f"{script} = pretrain." in scripts

  venv, site = _fresh_venv(tmp_path, wheel)
  work = tmp_path / "work"
  work.mkdir()
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
  }
  env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
  run = lambda *cmd: _run(cmd, cwd=work, env=env)

  where = json.loads(run(venv / "bin" / "python", "-c", _WHERE).stdout)
  for file in where["files"]:
    assert _inside(file, site), file
  for entry in where["path"]:
    assert not entry or not _inside(entry, REPO), entry
  assert not [m for m in where["modules"] if m.startswith("__editable__")]
  assert "train" not in where["modules"]

  (work / "corpus.txt").write_text(
    "the quick brown fox jumps over the lazy dog.\n" * 200
  )
  bin_ = venv / "bin"
  run(
    bin_ / "mno-prepare",
    "--data",
    "corpus.txt",
    "--out",
    "data",
    "--no-progress",
  )
  assert (work / "data" / "train.bin").is_file()
  assert (work / "data" / "val.bin").is_file()
  assert (work / "data" / "meta.json").is_file()

  run(
    bin_ / "mno-train",
    "--data",
    os.path.join("data", "train.bin"),
    "--d-model",
    "32",
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--eval-batches",
    "0",
    "--log-every",
    "1",
    "--ckpt-every",
    "3",
    "--no-progress",
    "--run-dir",
    os.path.join("runs", "wheel"),
  )
  run_dir = work / "runs" / "wheel"
  assert (run_dir / "ckpt" / "3").is_dir()
  records = (run_dir / "metrics.jsonl").read_text().splitlines()
  steps = [r["step"] for r in map(json.loads, records) if r["kind"] == "train"]
  assert steps == [1, 2, 3]  # completed updates, as the checkpoint's 3

  out = run(
    bin_ / "mno-sample",
    "--run-dir",
    os.path.join("runs", "wheel"),
    "--prompt",
    "the ",
    "--max-new-tokens",
    "8",
    "--num-samples",
    "1",
  ).stdout
  assert "--- greedy ---" in out and "--- sample 1" in out
