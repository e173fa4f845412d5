"""Every public function documents each argument, what it returns, the paper
it implements and a doctested example, as optax's docstrings do."""

import inspect
import re

import pytest

import multinorm_optax as mo

SECTIONS = ("Args:", "Returns:", "References:", "Examples:")
PAPERS = ("2502.06742", "2412.13148")

FUNCTIONS = sorted(
  name for name in mo.__all__ if inspect.isfunction(getattr(mo, name))
)


def _section(doc: str, title: str) -> str:
  """The lines of ``title``'s section: up to the next ``Word:`` heading."""
  lines = inspect.cleandoc(doc).splitlines()
  start = lines.index(title) + 1
  body = []
  for line in lines[start:]:
    if re.fullmatch(r"[A-Z][A-Za-z ]*:", line):
      break
    body.append(line)
  return "\n".join(body)


def test_there_are_public_functions_to_check():
  assert {"sinkgd", "swan", "sinkgd_stateless", "multinorm"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_docstring_has_args_returns_references_and_examples(name):
  doc = inspect.getdoc(getattr(mo, name)) or ""
  lines = doc.splitlines()
  for title in SECTIONS:
    assert title in lines, f"{name}: no {title} section"
  assert any(p in _section(doc, "References:") for p in PAPERS), name
  assert ">>>" in _section(doc, "Examples:"), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_argument_is_documented_in_args(name):
  fn = getattr(mo, name)
  args = _section(inspect.getdoc(fn), "Args:")
  documented = set(re.findall(r"^  ?(\w+)(?: \([^)]*\))?:", args, re.M))
  params = set(inspect.signature(fn).parameters)
  assert params <= documented, f"{name}: undocumented {params - documented}"
  assert documented <= params, f"{name}: documents {documented - params}"
