"""Training checkpoints: an orbax CheckpointManager plus the checks that protect a run.

A checkpoint at step `s` is orbax's step directory `<dir>/<s>/` with three items:

- `state`: the train state pytree (params, optimizer state, step, rng), saved sharded
  and restored onto whatever shardings the caller asks for, so a run saved on one mesh
  resumes on another;
- `run`: a JSON record of what produced it (model config, tokenizer, optimizer, batch
  shape, flags). Resuming with a different model, tokenizer, optimizer, batch size or
  sequence length is refused before anything is built or written;
- `checksums`: a checksum of every array of `state` (see `tree_checksums`) and of the
  run record, computed before the save and committed by orbax together with the rest.

What is a finished step is orbax's call (its step name format and commit protocol),
narrowed to the directories that hold our `run` item: anything else in the directory,
such as an unrelated `ckpt/2024/`, is never listed, restored, moved or deleted.

Safety kept on top of orbax, which never deletes anything but the old steps that
`keep` lets go:

- a save that fails raises `SaveError` (one line naming the step) after orbax's
  threads are shut down, so the run ends instead of hanging;
- orbax's temporary directories left by an interrupted save are moved aside to
  `<dir>.unfinished/` when the run resumes (orbax would delete them);
- on restore every array is checked against its checksum; a step with a file that
  cannot be read or an array that does not match is moved aside to `<dir>.damaged/`
  with a note naming it, and the next older step is tried. Any other error (a
  request that does not fit the checkpoint, a bug) is reported as what it is and
  moves nothing: a healthy checkpoint is never called damaged;
- orbax's own log (its tracebacks of a failed save run to hundreds of lines) goes
  to `<dir>/orbax.log` while the run has its checkpoints open, and our one line
  names that file.

Paths go through `etils.epath`, as orbax's do, so `gs://` directories work too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from pretrain import record
from pretrain.errors import SaveError

ITEMS = ("state", "run", "checksums")


class _Mismatch(ValueError):
  """What was read does not match its checksum: damage."""


def is_damage(error: BaseException) -> bool:
  """Whether `error` says that a file of a checkpoint is missing, cut short or
  garbled (or does not match its checksum), rather than that the request or
  the program is wrong.

  Orbax reports tensorstore's read failures ("Error reading ... in OCDBT
  database") as ValueErrors, so those are recognized by their words; any
  OSError or decoding error in the chain counts too.
  """
  while error is not None:
    if isinstance(
      error, _Mismatch | OSError | json.JSONDecodeError | UnicodeDecodeError
    ):
      return True
    text = str(error).lower()
    if "error reading" in text or "error while reading" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


# ------------------------------------------------------------------ orbax's log

ORBAX_LOG = "orbax.log"


class _OrbaxLog(logging.Filter):
  """Takes orbax's records off the "absl" logger, whose handlers would print
  them (with their tracebacks) to stderr, into the file `path`, opened at the
  first record; with `path` None, records below ERROR are dropped (the notices
  that opening a checkpoint read-only gives) and the rest pass."""

  def __init__(self, path: str | None):
    super().__init__()
    self.path = path
    self.records = 0
    self._handler = None

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if self.path is None:
      return record.levelno >= logging.ERROR
    if self._handler is None:
      self._handler = logging.FileHandler(self.path)
      self._handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s")
      )
    self._handler.handle(record)
    self.records += 1
    return False

  def close(self) -> None:
    logging.getLogger("absl").removeFilter(self)
    if self._handler is not None:
      self._handler.close()


def _log_orbax_to(path: str | None) -> _OrbaxLog:
  log = _OrbaxLog(path)
  logging.getLogger("absl").addFilter(log)
  return log


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax's notices dropped while reading: a tool's output stays its own."""
  log = _log_orbax_to(None)
  try:
    yield
  finally:
    log.close()


# ------------------------------------------------------------------ checksums


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: every input bit flips each output bit with
  probability about 1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (one per element; two for 8-byte dtypes)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size >= 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def array_checksum(x: jax.Array) -> jax.Array:
  """Two uint32 words that change when any bit of `x` changes.

  With w_i the array's words in C order and i their position,

      h1 = sum_i w_i * (2i + 1)            mod 2^32
      h2 = sum_i fmix32(w_i xor i * phi)   mod 2^32   (phi = 0x9E3779B1)

  A change of one word changes h1 (2i + 1 is odd, hence invertible mod 2^32);
  h2 is nonlinear, so changes of several words that cancel in h1 still show.
  Integer sums mod 2^32 are exact in any order, so the checksum is the same
  whatever the sharding, mesh or device count it is computed on.
  """
  w = _words(x)
  index = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):
    iota = jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
    index = index + iota * jnp.uint32(stride % 2**32)
    stride *= w.shape[axis]
  h1 = jnp.sum(w * (2 * index + 1), dtype=jnp.uint32)
  h2 = jnp.sum(_fmix32(w ^ (index * jnp.uint32(0x9E3779B1))), dtype=jnp.uint32)
  return jnp.stack([h1, h2])


@jax.jit
def _tree_words(tree):
  return jax.tree.map(array_checksum, tree)


def tree_checksums(tree) -> dict[str, str]:
  """{`jax.tree_util.keystr` path: 16 hex digits} for every array of `tree`."""
  words = jax.device_get(_replicated(_tree_words(tree)))
  return {
    jax.tree_util.keystr(path): f"{int(w[0]):08x}{int(w[1]):08x}"
    for path, w in jax.tree_util.tree_leaves_with_path(words)
  }


def _replicated(tree):
  """Fully replicated copies, so that every process can read the values."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def record_checksum(record: dict) -> str:
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------ which steps are ours


@dataclasses.dataclass(frozen=True)
class _OwnSteps(ocp.step.NameFormat):
  """Orbax's standard step names, narrowed to directories holding our `run` item."""

  base: ocp.step.NameFormat = dataclasses.field(
    default_factory=ocp.step.standard_name_format
  )

  def build_name(self, step: int) -> str:
    return self.base.build_name(step)

  def find_all(self, base_path):
    return (m for m in self.base.find_all(base_path) if _holds_run(m.path))

  def find_step(self, base_path, step: int):
    found = self.base.find_step(base_path, step)
    if not _holds_run(found.path):
      raise ValueError(f"{found.path} is not a checkpoint of this program")
    return found


def _holds_run(path) -> bool:
  return (epath.Path(path) / "run").is_dir()


def _manager(directory: str, keep: int, *, read_only: bool = False):
  n = keep if keep > 0 else None
  options = dict(
    create=not read_only,
    read_only=read_only,
    save_interval_steps=0 if read_only else 1,
    step_name_format=_OwnSteps(),
    # The step directory is created in `save()` itself, not in the background:
    # when that fails (a file in the way, no permission, no space), orbax's
    # background writers would otherwise wait for it forever and the process
    # could not exit.
    async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
  )
  latest_n = getattr(getattr(ocp, "checkpoint_managers", None), "LatestN", None)
  if read_only:
    pass  # nothing is saved or deleted
  elif latest_n is None:  # older orbax: no preservation policies yet
    options["max_to_keep"] = n
  else:
    options["preservation_policy"] = latest_n(n=n)
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(**options),
    item_names=ITEMS,
  )


def complete_steps(directory) -> list[int]:
  """Steps of this program saved completely in `directory`, ascending."""
  path = epath.Path(directory)
  if not path.is_dir():
    return []
  return sorted(m.step for m in _OwnSteps().find_all(path))


def _unfinished(directory: epath.Path) -> list[epath.Path]:
  """What interrupted saves left, as orbax recognizes it: its temporary dirs."""
  if not directory.is_dir():
    return []
  return sorted(
    (p for p in directory.iterdir() if ocp.utils.is_tmp_checkpoint(p)),
    key=lambda p: p.name,
  )


class Checkpoints:
  """The checkpoints of one run.

  The constructor only reads `directory`; `open()` moves the debris of interrupted
  saves aside and starts the orbax manager, so the caller can check its other
  inputs in between and leave the directory untouched when any of them is bad.

  Args:
    directory: where step directories live (created on the first save).
    run_record: JSON-able description of the run; its `record.MUST_MATCH` entries must equal
      those of the checkpoint being resumed.
    resume: continue from the latest intact checkpoint, if there is one. Without
      it, a directory that already holds checkpoints is refused, never overwritten.
    keep: keep the last `keep` checkpoints (0: all).

  Raises:
    ValueError: checkpoints exist but `resume` is off, or they come from a different
      model, tokenizer, optimizer or batch shape.
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
    self._damaged: dict[int, str] = {}  # step: why, to move aside in open()
    self._orbax_log = None
    steps = complete_steps(self._path)
    self._unfinished = _unfinished(self._path)
    if not resume and (steps or self._unfinished):
      what = (
        f"checkpoints up to step {steps[-1]}"
        if steps
        else "partial checkpoints"
      )
      raise ValueError(
        f"{directory} already holds {what}; pass --resume to continue "
        f"that run or --ckpt-dir to start a new one elsewhere"
      )
    self._steps = steps
    saved = None
    for step in reversed(steps):  # the newest whose run record reads
      try:
        saved = _read_run_record(self._path, step)
        break
      except Exception as e:
        self._damaged[step] = f"run record: {_damage(step, directory, e)}"
    if steps and saved is None:
      raise ValueError(
        f"no intact checkpoint in {directory}: step {steps[-1]}'s "
        f"{self._damaged[steps[-1]]}, and no older step has a run record "
        f"either; nothing was moved"
      )
    self.latest_step = step if saved is not None else None
    self._last_committed = self.latest_step
    if saved is not None:
      self._check_same_run(directory, saved)

  def _check_same_run(self, directory, saved: dict) -> None:
    self.notes += record.resume_notes(saved, self.run_record, directory)

  def reached_preemption(self, step: int) -> bool:
    """Orbax's answer: has every process reached JAX's preemption sync point
    at `step`? (False on one process, or with the service off.)"""
    return bool(self._manager.reached_preemption(step))

  def read_run_record(self, step: int) -> dict:
    return read_run_record(self._path, step)

  def open(self) -> None:
    """Moves aside what interrupted saves left and damaged steps whose run record
    could not be read, then starts the orbax manager."""
    if self._unfinished:
      self.notes.append(
        f"moved unfinished saves of {self.directory} to "
        f"{self.directory}.unfinished: "
        + ", ".join(p.name for p in self._unfinished)
      )
      self._move_aside(self._unfinished, ".unfinished")
    for step, why in sorted(self._damaged.items(), reverse=True):
      self._set_aside_damaged(step, why)
    self._orbax_log = _log_orbax_to(self._orbax_log_path())
    self._manager = _manager(self.directory, self._keep)

  def _orbax_log_path(self) -> str | None:
    if "://" in self.directory:
      return None  # a remote directory: orbax's notices are dropped
    name = ORBAX_LOG
    if jax.process_index() > 0:
      name = f"orbax.process_{jax.process_index()}.log"
    os.makedirs(self.directory, exist_ok=True)
    return os.path.join(self.directory, name)

  def _set_aside_damaged(self, step: int, why: str) -> None:
    self.notes.append(
      f"checkpoint step {step} is damaged ({why}); moved it to "
      f"{self.directory}.damaged/{step}"
    )
    self._move_aside([self._path / str(step)], ".damaged")
    self._steps = [s for s in self._steps if s != step]

  def _move_aside(self, paths, suffix: str) -> None:
    """Renames `paths` into `<directory><suffix>/`: moved, never deleted, so
    whatever they hold can still be recovered by hand."""
    if jax.process_index() == 0:
      aside = epath.Path(self.directory + suffix)
      aside.mkdir(parents=True, exist_ok=True)
      for p in paths:
        target = aside / p.name
        n = 1
        while target.exists():
          target = aside / f"{p.name}.{n}"
          n += 1
        p.rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("pretrain.checkpoint.move_aside")

  def restore(self, abstract_state):
    """The state of the newest intact step, placed as `abstract_state` (a pytree of
    `jax.ShapeDtypeStruct`s with shardings) says: the arrays land on the current
    mesh, whatever mesh they were saved from.

    Every array is checked against the checksum saved with it. A step that cannot
    be read or does not match is moved aside to `<directory>.damaged/` (with a
    note) and the next older one is tried; `latest_step` is the step restored.

    Raises:
      ValueError: no step is intact.
    """
    for step in sorted(self._steps, reverse=True):
      state, why = self._restore_verified(step, abstract_state)
      if why is None:
        self.latest_step = self._last_committed = step
        return state
      self._set_aside_damaged(step, why)
      self._manager.reload()
    self.latest_step = self._last_committed = None
    raise ValueError(
      f"no intact checkpoint left in {self.directory}: the damaged ones were "
      f"moved to {self.directory}.damaged; start a new run elsewhere, or "
      f"drop --resume to start this one from scratch in a new --ckpt-dir"
    )

  def _restore_verified(self, step: int, abstract_state):
    """(state, None) if `step` reads and matches its checksums, else (None, why)."""
    state, why, error = None, None, None
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          checksums=ocp.args.JsonRestore(),
        ),
      )
      state, expected = restored["state"], restored["checksums"]["state"]
    except Exception as e:
      if is_damage(e):  # a truncated or garbled file, a missing item
        why = f"read error: {_one_line(e)}"
      else:
        error = e
    # 0: read, 1: damaged, 2: failed otherwise; the worst on any process.
    worst = _worst_of_processes(2 if error else int(why is not None))
    if worst == 2:
      if error is None:
        raise ValueError(
          f"cannot restore checkpoint step {step} of {self.directory}: it "
          f"failed on another process"
        )
      raise _not_damage(step, self.directory, error) from None
    if worst == 1:
      return None, why or "read error on another process"
    found = tree_checksums(state)
    bad = [k for k in found if expected.get(k) != found[k]]
    bad += [k for k in expected if k not in found]
    if bad:
      return None, f"checksum mismatch in {bad[0]}" + (
        f" and {len(bad) - 1} more arrays" if len(bad) > 1 else ""
      )
    return state, None

  def save(self, step: int, state) -> None:
    """Saves `state` as `step`, asynchronously (`close()` waits for it).

    Raises:
      SaveError: this save, or the previous one still finishing in the
        background, failed. Orbax's threads are shut down first, so the caller
        can exit at once; every step committed before stays.
    """
    self._wait(self._pending_step)  # orbax's save() would wait for it too
    try:
      sums = {
        "state": tree_checksums(state),
        "run": record_checksum(self.run_record),
      }
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          run=ocp.args.JsonSave(self.run_record),
          checksums=ocp.args.JsonSave(sums),
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
    if self._manager is not None:
      self._wait(self._pending_step)
      self._manager.close()
      self._manager = None
    if self._orbax_log is not None:
      self._orbax_log.close()
      self._orbax_log = None

  def _wait(self, step: int | None) -> None:
    """Waits for the save of `step` (None: none pending) to be committed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._abort()
      raise SaveError(self._failure(step, e)) from e
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
    log = self._orbax_log
    orbax = (
      f" (orbax's log: {log.path})" if log is not None and log.records else ""
    )
    return (
      f"saving checkpoint step {step} to {self.directory} failed "
      f"({_one_line(error)}); stopped, {kept}{orbax}"
    )


def read_run_record(directory, step: int) -> dict:
  """The run record saved with checkpoint `step` of `directory`, checked against
  the checksum saved with it. Nothing is written.

  Raises:
    ValueError: it is missing, unreadable or does not match its checksum.
  """
  directory = _absolute(directory)
  try:
    return _read_run_record(directory, step)
  except Exception as e:
    raise ValueError(
      f"checkpoint step {step} of {directory} has no intact run record "
      f"({_damage(step, directory, e)})"
    ) from None


def _read_run_record(directory, step: int) -> dict:
  with _quiet_orbax():
    reader = _manager(str(directory), 0, read_only=True)
    try:
      items = reader.restore(
        step,
        args=ocp.args.Composite(
          run=ocp.args.JsonRestore(), checksums=ocp.args.JsonRestore()
        ),
      )
    finally:
      reader.close()
  record, sums = items["run"], items["checksums"]
  if sums.get("run") != record_checksum(record):
    raise _Mismatch("run record does not match its checksum")
  return record


def _absolute(directory) -> str:
  """Orbax takes absolute paths only ("Checkpoint path should be absolute")."""
  if "://" in str(directory):
    return str(directory)
  return os.path.abspath(directory)


def _not_damage(step: int, directory, error: Exception) -> ValueError:
  return ValueError(
    f"cannot read checkpoint step {step} of {directory} ({_one_line(error)}); "
    f"this is not damage to the checkpoint, which is left as it is"
  )


def _damage(step: int, directory, error: Exception) -> str:
  """`error` in one line, where it is damage to checkpoint `step` (see
  `is_damage`); otherwise raises the ValueError that says it is not."""
  if not is_damage(error):
    raise _not_damage(step, directory, error) from None
  return _one_line(error)


def restore_params(directory, step: int, abstract_params):
  """Only the parameters of checkpoint `step`, placed as `abstract_params` says,
  checked against their checksums.

  For tools that read a run (sampling, evaluation): the optimizer state is not
  read, and nothing in `directory` is written or moved, so a run may be
  training and saving there meanwhile. `directory` may be relative.

  Raises:
    ValueError: no such step; the step is damaged (a file that cannot be read,
      a checksum mismatch: the message says "is damaged"); or reading it failed
      otherwise (e.g. `abstract_params` of another model), said as such.
  """
  directory = _absolute(directory)
  step_dir = epath.Path(directory) / str(step)
  if not step_dir.is_dir():
    raise ValueError(f"there is no checkpoint step {step} in {directory}")
  item = {"params": abstract_params}
  try:
    with _quiet_orbax():
      with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
          step_dir / "state",
          args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
          ),
        )
      reader = _manager(directory, 0, read_only=True)
      try:
        sums = reader.restore(
          step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore())
        )["checksums"]["state"]
      finally:
        reader.close()
  except Exception as e:
    raise ValueError(
      f"checkpoint step {step} of {directory} is damaged (read error: "
      f"{_damage(step, directory, e)})"
    ) from None
  found = tree_checksums({"params": restored["params"]})
  bad = [k for k in found if sums.get(k) != found[k]]
  if bad:
    raise ValueError(
      f"checkpoint step {step} of {directory} is damaged (checksum mismatch "
      f"in {bad[0]})"
    )
  return restored["params"]


def _worst_of_processes(code: int) -> int:
  """The largest of `code` over every process."""
  if jax.process_count() == 1:
    return code
  from jax.experimental import multihost_utils

  return int(np.max(multihost_utils.process_allgather(np.array(code))))


def _one_line(error: Exception) -> str:
  text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
  return text if len(text) <= 200 else text[:197] + "..."
