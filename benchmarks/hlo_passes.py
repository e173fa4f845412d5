"""Full-size memory traffic of a compiled XLA program, read off its HLO text.

In every computation that runs as its own kernels (the entry computation and
what it calls through ``while``/``call``/``conditional``; not the bodies of
fusions, which run inside one kernel), each instruction that takes a
full-size operand (as many elements as the matrix) counts one read per such
operand, and each full-size result counts one write. Instructions that move
no data (parameter, constant, tuple, get-tuple-element, bitcast) are
skipped. A loop body is counted once however often it runs; a conditional
adds its cheapest branch (its dearest is reported beside it). This is XLA's
plan for the platform it compiled for, not a measurement: free of timing
noise, it shows what fused. ``benchmarks.step_cost --count-passes`` reports it.
"""

from __future__ import annotations

import math
import re

_NO_DATA_MOVED = {
  "parameter",
  "constant",
  "tuple",
  "get-tuple-element",
  "bitcast",
  "after-all",
  "partition-id",
  "replica-id",
}
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$"
)
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(
  r"\b(?:body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
  r"|branch_computations=\{([^}]*)\}"
)


def _arrays(shape_text: str) -> list[tuple[int, int]]:
  """(elements, bytes) of each array in an HLO shape such as ``(f32[4,8]{1,0}, s32[])``."""
  out = []
  for dtype, dims in _ARRAY.findall(shape_text):
    if dtype in _DTYPE_BYTES:
      n = math.prod(int(d) for d in dims.split(",") if d)
      out.append((n, n * _DTYPE_BYTES[dtype]))
  return out


def _operand_list(text: str) -> str:
  """The text up to the parenthesis closing an instruction's operand list."""
  depth = 1
  for i, ch in enumerate(text):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return text[:i]
  return text


def count_full_size_traffic(hlo_text: str, elements: int) -> dict:
  """Reads and writes of ``elements``-sized arrays by the kernels of an optimized HLO module."""
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m:
        current = m.group(2)
        computations[current] = []
        if m.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if m:
      computations[current].append(m.groups())

  shapes = {
    name: shape for body in computations.values() for name, shape, _, _ in body
  }
  seen: set[str] = set()

  def called(rest: str) -> list[str]:
    out = []
    for single, several in _CALLED.findall(rest):
      out += (
        [single]
        if single
        else [c.strip().lstrip("%") for c in several.split(",")]
      )
    return out

  def traffic(comp: str) -> dict:
    """Counts of `comp` and what it calls: a conditional adds its cheapest
    branch (`worst` adds its dearest)."""
    t = dict(reads=0, writes=0, moved=0, worst=0, loop=False, cond=False)
    if comp in seen or comp not in computations:
      return t
    seen.add(comp)

    def add(sub):
      for k in ("reads", "writes", "moved", "worst"):
        t[k] += sub[k]
      t["loop"] |= sub["loop"]
      t["cond"] |= sub["cond"]

    for _name, shape, opcode, rest in computations[comp]:
      if opcode in ("while", "call"):
        t["loop"] |= opcode == "while"
        for c in called(rest):
          add(traffic(c))
        continue
      if opcode == "conditional":
        branches = [traffic(c) for c in called(rest)]
        if branches:
          cheapest = min(branches, key=lambda b: b["moved"])
          add({**cheapest, "worst": max(b["worst"] for b in branches)})
        t["cond"] = True
        continue
      if opcode in _NO_DATA_MOVED:
        continue
      for operand in dict.fromkeys(
        re.findall(r"%([\w.\-]+)", _operand_list(rest))
      ):
        for n, nbytes in _arrays(shapes.get(operand, "")):
          if n == elements:
            t["reads"] += 1
            t["moved"] += nbytes
            t["worst"] += nbytes
      for n, nbytes in _arrays(shape):
        if n == elements:
          t["writes"] += 1
          t["moved"] += nbytes
          t["worst"] += nbytes
    return t

  t = traffic(entry)
  return {
    "reads": t["reads"],
    "writes": t["writes"],
    "passes": t["moved"] / (4 * elements),
    "has_loop": t["loop"],
    "has_conditional": t["cond"],
    "passes_all_branches": t["worst"] / (4 * elements),
  }
