"""Training checkpoints: an orbax CheckpointManager plus the checks that protect a run.

A checkpoint at step `s` is a directory `<dir>/<s>/` with two items:

- `state`: the train state pytree (params, optimizer state, step, rng), saved sharded
  and restored onto whatever shardings the caller asks for, so a run saved on one mesh
  resumes on another;
- `run`: a JSON record of what produced it (model config, tokenizer, optimizer, flags).
  Resuming with a different model, tokenizer or optimizer is refused before anything is
  built or written.

Orbax writes a step into a temporary directory, puts `commit_success.txt` in it and
only then renames it to `<s>/` (on object stores, where there is no rename, the commit
file alone marks completion). So a run killed mid-save leaves a tmp dir or a step dir
without the commit file; only steps with the commit file count, the debris is moved
aside to `<dir>.unfinished/` when the run resumes (never deleted), and the previous
step stays restorable.

Paths go through `etils.epath`, as orbax's do, so `gs://` directories work too.
"""

from __future__ import annotations

import json

import jax
import orbax.checkpoint as ocp
from etils import epath

COMMIT_FILE = "commit_success.txt"
TMP_MARKER = ".orbax-checkpoint-tmp"
# Resuming with a different one of these would fail to load or silently train something
# else; any other difference between run records is only noted.
MUST_MATCH = ("model", "tokenizer", "optimizer")


def _step_dirs(directory: epath.Path) -> dict[int, bool]:
  """{step: complete} for every step directory; complete = holds the commit file."""
  if not directory.is_dir():
    return {}
  return {
    int(p.name): (p / COMMIT_FILE).exists()
    for p in directory.iterdir()
    if p.name.isdigit() and p.is_dir()
  }


def complete_steps(directory) -> list[int]:
  """Steps saved completely in `directory`, ascending."""
  return sorted(
    s for s, done in _step_dirs(epath.Path(directory)).items() if done
  )


def _debris(directory: epath.Path) -> list[epath.Path]:
  """What interrupted saves left: tmp dirs and step dirs without the commit file."""
  if not directory.is_dir():
    return []
  found = [p for p in directory.iterdir() if TMP_MARKER in p.name]
  found += [
    directory / str(s) for s, done in _step_dirs(directory).items() if not done
  ]
  return sorted(found, key=lambda p: p.name)


class Checkpoints:
  """The checkpoints of one run.

  The constructor only reads `directory`; `open()` clears the debris of interrupted
  saves and starts the orbax manager, so the caller can check its other inputs in
  between and leave the directory untouched when any of them is bad.

  Args:
    directory: where step directories live (created on the first save).
    run_record: JSON-able description of the run; its `MUST_MATCH` entries must equal
      those of the checkpoint being resumed.
    resume: continue from the latest complete checkpoint, if there is one. Without
      it, a directory that already holds checkpoints is refused, never overwritten.
    keep: keep the last `keep` checkpoints (0: all).

  Raises:
    ValueError: checkpoints exist but `resume` is off, or they come from a different
      model, tokenizer or optimizer.
  """

  def __init__(self, directory, run_record: dict, *, resume: bool, keep: int):
    path = epath.Path(directory)
    self.directory = str(path if "://" in str(directory) else path.absolute())
    self._path = epath.Path(self.directory)
    self.run_record = run_record
    self.notes: list[str] = []
    self._keep = keep
    self._manager = None
    steps = complete_steps(self._path)
    self._debris = _debris(self._path)
    if not resume and (steps or self._debris):
      what = (
        f"checkpoints up to step {steps[-1]}"
        if steps
        else "partial checkpoints"
      )
      raise ValueError(
        f"{directory} already holds {what}; pass --resume to continue "
        f"that run or --ckpt-dir to start a new one elsewhere"
      )
    self.latest_step = steps[-1] if steps else None
    if self.latest_step is not None:
      saved = self.read_run_record(self.latest_step)
      for key in MUST_MATCH:
        if saved.get(key) != run_record.get(key):
          raise ValueError(
            f"{directory} holds a run with a different {key} "
            f"({_short(saved.get(key))}, not {_short(run_record.get(key))}); "
            f"use another --ckpt-dir"
          )
      old, new = saved.get("args", {}), run_record.get("args", {})
      changed = [
        k
        for k in sorted(set(old) | set(new))
        if k != "resume" and old.get(k) != new.get(k)
      ]
      if changed:
        self.notes.append(
          "resuming with changed flags: "
          + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed)
        )

  def read_run_record(self, step: int) -> dict:
    return read_run_record(self._path, step)

  def open(self) -> None:
    """Clears the debris of interrupted saves and starts the orbax manager."""
    if self._debris:
      # Moved aside, never deleted: if some orbax version finalized a step without
      # the commit file, the user's checkpoint is still there to recover by hand.
      aside = epath.Path(self.directory + ".unfinished")
      self.notes.append(
        f"moved unfinished saves of {self.directory} to {aside}: "
        + ", ".join(p.name for p in self._debris)
      )
      if jax.process_index() == 0:
        aside.mkdir(parents=True, exist_ok=True)
        for p in self._debris:
          target = aside / p.name
          n = 1
          while target.exists():
            target = aside / f"{p.name}.{n}"
            n += 1
          p.rename(target)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pretrain.checkpoint.open")
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=_manager_options(self._keep),
      item_names=("state", "run"),
    )

  def restore(self, abstract_state, step: int | None = None):
    """The state saved at `step` (default: the latest), placed as `abstract_state`
    (a pytree of `jax.ShapeDtypeStruct`s with shardings) says: the arrays land on the
    current mesh, whatever mesh they were saved from."""
    step = self.latest_step if step is None else step
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
    )
    return restored["state"]

  def save(self, step: int, state) -> None:
    """Saves `state` as `step`, asynchronously (`close()` waits for it)."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        run=ocp.args.JsonSave(self.run_record),
      ),
    )
    self.latest_step = step

  def close(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


def _manager_options(keep: int) -> ocp.CheckpointManagerOptions:
  n = keep if keep > 0 else None
  latest_n = getattr(getattr(ocp, "checkpoint_managers", None), "LatestN", None)
  if latest_n is None:  # older orbax: no preservation policies yet
    return ocp.CheckpointManagerOptions(create=True, max_to_keep=n)
  return ocp.CheckpointManagerOptions(
    create=True, preservation_policy=latest_n(n=n)
  )


def _short(value) -> str:
  if isinstance(value, dict) and "name" in value:
    return str(value["name"])
  text = str(value)
  return text if len(text) <= 60 else text[:57] + "..."


def read_run_record(directory, step: int) -> dict:
  """The run record saved with checkpoint `step` of `directory`.

  Raises:
    ValueError: it is missing or not JSON.
  """
  path = epath.Path(directory) / str(step) / "run" / "metadata"
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    raise ValueError(
      f"checkpoint {path.parent.parent} has no readable run record ({path})"
    ) from None


def restore_params(directory, step: int, abstract_params):
  """Only the parameters of checkpoint `step`, placed as `abstract_params` says.

  For tools that read a run (sampling, evaluation): the optimizer state is not
  read, and nothing in `directory` is written or moved, so a run may be
  training and saving there meanwhile.
  """
  item = {"params": abstract_params}
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(
      epath.Path(directory) / str(step) / "state",
      args=ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
      ),
    )
  return restored["params"]
