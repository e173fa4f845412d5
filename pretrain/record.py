"""The run record: what a checkpoint says about the run that made it, and
which differences a resume refuses.

A record is a JSON dict:

    model:     the LLaMA config (how it computes -- dtype, attention, remat,
               layout -- aside) and the preset's name
    layout:    "unrolled layers" or "scanned layers (--scan-layers)"
    tokenizer: {name, vocab_size}
    optimizer: {name, and what its state holds beyond the defaults}
    data:      {--batch-size, --seq-len}: with the seed they pick each step's
               windows of the corpus
    args:      every recorded flag, with library defaults resolved

Resuming needs the `MUST_MATCH` entries equal; any other flag may change, with
a note. `upgrade` reads a record written by an older version as what it meant.
"""

from __future__ import annotations

import dataclasses

from pretrain.config import TrainConfig, recorded_fields
from pretrain.optim import REGISTRY

# The run record's name of each parameter layout (--scan-layers or not).
LAYOUTS = {False: "unrolled layers", True: "scanned layers (--scan-layers)"}
# Resuming with a different one of these would fail to load or silently train
# something else; any other difference between run records is only noted.
MUST_MATCH = ("model", "layout", "tokenizer", "optimizer", "data")
# Why a different "data" is refused: the sampler serves step s the windows that
# (seed, s, batch shape) pick; another batch shape picks other windows, so the
# rest of the run would repeat some data and never see other data.
DATA_WHY = (
  "the remaining steps would be served other windows of the corpus, so data "
  "would repeat or skip"
)
# Flags that may differ between a run and its resume without a note.
UNNOTED = ("resume",)


def optimizer_state_kind(config: TrainConfig) -> dict:
  """The flags that change what the optimizer state holds (empty for the
  defaults, so older records still match): a checkpoint restores only into
  the same kind of state."""
  return REGISTRY[config.optimizer].state_kind(config)


def library_defaults(config: TrainConfig) -> dict:
  """Flags left at None ("the library's default"), recorded as that default.

  A resume under a library whose default has changed (SWAN's whitening became
  ``fast``) then says so in its note of changed flags instead of silently
  continuing with another algorithm.
  """
  return REGISTRY[config.optimizer].library_defaults(config)


def run_record(config: TrainConfig, model_config, tokenizer) -> dict:
  """The record of a run of `config` with this model config and tokenizer."""
  how = ("dtype", "attention", "remat", "scan_layers")
  model = {
    k: getattr(v, "__name__", v)
    for k, v in dataclasses.asdict(model_config).items()
    if k not in how
  }
  return {
    "model": {"name": config.model, **model},
    "layout": LAYOUTS[model_config.scan_layers],
    "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size},
    "optimizer": {"name": config.optimizer, **optimizer_state_kind(config)},
    "data": {"--batch-size": config.batch_size, "--seq-len": config.seq_len},
    "args": {k: getattr(config, k) for k in recorded_fields()}
    | library_defaults(config),
  }


def upgrade(saved: dict) -> dict:
  """`saved` as this version writes it: entries that older records lack get
  the value they implied (every run before --scan-layers was unrolled). A
  record from before batch shapes were recorded keeps no "data": there is
  nothing to compare it with."""
  return {"layout": LAYOUTS[False], **saved}


def resume_notes(saved: dict, now: dict, directory) -> list[str]:
  """The notes of resuming the run of record `saved` as record `now`.

  Raises:
    ValueError: a `MUST_MATCH` entry differs (one line naming it).
  """
  saved, now = upgrade(saved), upgrade(now)
  for key in MUST_MATCH:
    if key == "data" and key not in saved:
      continue  # saved before batch shapes were recorded
    was, new = saved.get(key), now.get(key)
    if was != new:
      why = f": {DATA_WHY}" if key == "data" else ""
      raise ValueError(
        f"{directory} holds a run with a different {key} "
        f"({_short(was, new)}, not {_short(new, was)})"
        f"{why}; use another --ckpt-dir"
      )
  old, new = saved.get("args", {}), now.get("args", {})
  changed = [
    k
    for k in sorted(set(old) | set(new))
    if k not in UNNOTED and old.get(k) != new.get(k)
  ]
  if not changed:
    return []
  return [
    "resuming with changed flags: "
    + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed)
  ]


def _short(value, other=None) -> str:
  """`value` in a few words: a record's name, with the entries where it
  differs from `other` when the names are the same."""
  if isinstance(value, dict) and "name" in value:
    if not isinstance(other, dict) or other.get("name") != value["name"]:
      return str(value["name"])
    keys = sorted(set(value) | set(other))
    return ", ".join(
      [str(value["name"])]
      + [
        f"{k} {value.get(k, 'unset')}"
        for k in keys
        if value.get(k) != other.get(k)
      ]
    )
  if isinstance(value, dict):
    text = ", ".join(f"{k} {v}" for k, v in value.items())
  else:
    text = str(value)
  return text if len(text) <= 60 else text[:57] + "..."
