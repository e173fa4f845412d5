"""pretrain/command.py: each command names itself as it was run, and its
flag errors are one line with exit code 2."""

import subprocess
import sys
import types

import pytest

from pretrain.command import OneLineParser, prog_name
from tests.pretrain.runs import REPO


def test_console_script_is_named_by_its_file(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["/venv/bin/mno-sample", "--step", "3"])
  assert prog_name("pretrain.sample") == "mno-sample"


def test_module_run_with_python_m_is_named_so(monkeypatch):
  main = types.ModuleType("__main__")
  main.__spec__ = types.SimpleNamespace(name="pretrain.prepare")
  monkeypatch.setitem(sys.modules, "__main__", main)
  monkeypatch.setattr(sys, "argv", ["/repo/pretrain/prepare.py"])
  assert prog_name("pretrain.prepare") == "python -m pretrain.prepare"
  assert prog_name("pretrain.sample") == "prepare.py"  # another module's


def test_flag_error_is_one_line_and_exit_code_2(capsys):
  p = OneLineParser(prog="mno-prepare")
  p.add_argument("--out", required=True)
  with pytest.raises(SystemExit) as e:
    p.parse_args(["--nope"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("mno-prepare: error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("module", ["pretrain.prepare", "pretrain.sample"])
def test_python_m_names_the_module_in_its_errors(module):
  done = subprocess.run(
    [sys.executable, "-m", module, "--nope"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 2
  assert done.stderr.startswith(f"python -m {module}: error: "), done.stderr
