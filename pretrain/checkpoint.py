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
MUST_MATCH = ("model", "tokenizer", "optimizer", "data")
# Why a different "data" is refused: the sampler serves step s the windows that
# (seed, s, batch shape) pick; another batch shape picks other windows, so the rest
# of the run would repeat some data and never see other data.
DATA_WHY = (
  "the remaining steps would be served other windows of the corpus, so data "
  "would repeat or skip"
)


class SaveError(RuntimeError):
  """A checkpoint save failed; the message is one line naming the step."""


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
    self._pending_step = None  # saved, maybe not yet committed
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
    self._last_committed = self.latest_step
    if self.latest_step is not None:
      saved = self.read_run_record(self.latest_step)
      for key in MUST_MATCH:
        if key not in saved and key == "data":
          continue  # saved before batch shapes were recorded
        if saved.get(key) != run_record.get(key):
          why = f": {DATA_WHY}" if key == "data" else ""
          raise ValueError(
            f"{directory} holds a run with a different {key} "
            f"({_short(saved.get(key))}, not {_short(run_record.get(key))})"
            f"{why}; use another --ckpt-dir"
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
    """Saves `state` as `step`, asynchronously (`close()` waits for it).

    Raises:
      SaveError: this save, or the previous one still finishing in the
        background, failed. Orbax's threads are shut down first, so the caller
        can exit at once; every step committed before stays.
    """
    self._wait(self._pending_step)  # orbax's save() would wait for it too
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          run=ocp.args.JsonSave(self.run_record),
        ),
      )
    except Exception as e:
      self._abort()
      raise SaveError(self._failure(step, e)) from e
    self._pending_step = step
    self.latest_step = step

  def close(self) -> None:
    """Waits for the last save to be committed and shuts orbax's threads down.

    Raises:
      SaveError: the last save failed.
    """
    if self._manager is None:
      return
    self._wait(self._pending_step)
    self._manager.close()
    self._manager = None

  def _wait(self, step: int | None) -> None:
    """Waits for the save of `step` (None: none pending) to be committed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._abort()
      raise SaveError(self._failure(step, e)) from e
    self._committed(step)

  def _committed(self, step: int | None) -> None:
    if step is not None:
      self._last_committed = step
    self._pending_step = None

  def _abort(self) -> None:
    """Closes the manager after a failed save; its own errors are the same."""
    manager, self._manager = self._manager, None
    for _ in range(2):  # the first call re-raises the failure once
      try:
        manager.close()
        return
      except Exception:
        continue

  def _failure(self, step, error: Exception) -> str:
    kept = (
      f"last good checkpoint: {self._path / str(self._last_committed)}"
      if self._last_committed is not None
      else "no checkpoint was saved"
    )
    what = f"{type(error).__name__}: {error}".splitlines()[0]
    return (
      f"saving checkpoint step {step} to {self.directory} failed ({what}); "
      f"stopped, {kept}"
    )


def _manager_options(keep: int) -> ocp.CheckpointManagerOptions:
  n = keep if keep > 0 else None
  # The step directory is created in `save()` itself, not in the background: when
  # that fails (a file in the way, no permission, no space), orbax's background
  # writers would otherwise wait for it forever and the process could not exit.
  async_options = ocp.AsyncOptions(create_directories_asynchronously=False)
  latest_n = getattr(getattr(ocp, "checkpoint_managers", None), "LatestN", None)
  if latest_n is None:  # older orbax: no preservation policies yet
    return ocp.CheckpointManagerOptions(
      create=True, max_to_keep=n, async_options=async_options
    )
  return ocp.CheckpointManagerOptions(
    create=True, preservation_policy=latest_n(n=n), async_options=async_options
  )


def _short(value) -> str:
  if isinstance(value, dict) and "name" in value:
    return str(value["name"])
  if isinstance(value, dict):
    text = ", ".join(f"{k} {v}" for k, v in value.items())
  else:
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
