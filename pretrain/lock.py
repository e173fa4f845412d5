"""One writer per run: an exclusive lock on every output a run writes.

A run holds an advisory `flock` on `<dir>/.lock` of its run directory, and of
`--ckpt-dir` when that lies outside the run directory, and on `<file>.lock`
next to a `--metrics` file outside it, from before it writes anything until it
ends. A second run on any of them is refused in one line naming the holder's
pid. The kernel drops a `flock` with the last descriptor of its holder, so a
lock file left by a killed process (SIGKILL, a lost node) is free to take
again: the file's content (pid and host of the holder) only serves the message,
never decides who holds the lock. NFS emulates `flock` with POSIX locks, which
the server keeps across hosts.

Remote paths (`gs://...`) cannot be locked and are not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import socket

from pretrain.errors import InUseError

LOCK_NAME = ".lock"


@dataclasses.dataclass
class Lock:
  """A held lock: the open lock file, and what acquiring it created."""

  path: str  # the lock file
  fd: int
  created_dirs: list[str]  # made to hold the lock file, outermost first


def _inside(path: str, directory: str) -> bool:
  return os.path.commonpath([path, directory]) == directory


def lock_targets(
  run_dir: str,
  ckpt_dir: str | None,
  metrics: str | None,
  tensorboard: str | None = None,
) -> list[tuple[str, str]]:
  """(lock file, what to call the output) for each output a run writes.

  `ckpt_dir`, `metrics` and `tensorboard` (a directory) are None when the run
  does not write them. An output inside `run_dir` is covered by the run
  directory's lock; the run directory itself is locked only when something
  is written into it.
  """
  run_dir = os.path.realpath(run_dir)
  targets = []
  for path, flag, is_dir in (
    (ckpt_dir, "--ckpt-dir", True),
    (metrics, "--metrics", False),
    (tensorboard, "--tensorboard", True),
  ):
    if path is None or "://" in str(path):
      continue
    path = os.path.realpath(path)
    if _inside(path, run_dir):
      target = (os.path.join(run_dir, LOCK_NAME), f"--run-dir {run_dir}")
    elif is_dir:
      target = (os.path.join(path, LOCK_NAME), f"{flag} {path}")
    else:
      target = (path + ".lock", f"{flag} {path}")
    if target not in targets:
      targets.append(target)
  return targets


def acquire(lock_path: str, what: str) -> Lock:
  """Takes the exclusive lock `lock_path`, creating it (and its directory).

  Raises:
    InUseError: another process holds it.
    ValueError: the lock file cannot be created.
  """
  created = _make_dirs(os.path.dirname(lock_path), what)
  while True:
    try:
      fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      _remove_dirs(created)
      raise ValueError(
        f"{what}: cannot create the lock file {lock_path} ({e.strerror})"
      ) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        _remove_dirs(created)
        raise ValueError(
          f"{what}: cannot lock {lock_path} ({e.strerror})"
        ) from None
      raise InUseError(
        f"{what} is in use by {holder} (it holds {lock_path}); wait for it "
        f"to end or choose another one"
      ) from None
    # A holder that unlinked the file on release leaves us a lock on an
    # orphan inode: take the file that is there now instead.
    if _same_file(fd, lock_path):
      break
    os.close(fd)
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
  return Lock(lock_path, fd, created)


def release(lock: Lock, *, tidy: bool = False) -> None:
  """Drops `lock`, removing its file; with `tidy`, also the directories that
  acquiring it created, if they are still empty (a run refused before it
  wrote anything leaves nothing behind)."""
  if lock.fd < 0:
    return
  with contextlib.suppress(OSError):  # while held: no one takes it meanwhile
    os.unlink(lock.path)
  os.close(lock.fd)
  lock.fd = -1
  if tidy:
    _remove_dirs(lock.created_dirs)


class RunLocks:
  """The locks of every output of one run, taken together (see `lock_targets`).

  Raises (from the constructor):
    InUseError: another process holds one of them; none is kept.
  """

  def __init__(self, targets: list[tuple[str, str]]):
    self.locks: list[Lock] = []
    try:
      for path, what in targets:
        self.locks.append(acquire(path, what))
    except BaseException:
      self.release(tidy=True)
      raise

  def release(self, *, tidy: bool = False) -> None:
    for lock in reversed(self.locks):
      release(lock, tidy=tidy)
    self.locks = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _holder(fd: int) -> str:
  """'process PID' (with its host if not this one) as the lock file says."""
  try:
    words = os.pread(fd, 256, 0).decode(errors="replace").split()
  except OSError:
    words = []
  if not words or not words[0].isdigit():
    return "another process"
  host = words[1] if len(words) > 1 else None
  where = "" if host in (None, socket.gethostname()) else f" on {host}"
  return f"process {words[0]}{where}"


def _same_file(fd: int, path: str) -> bool:
  try:
    now = os.stat(path)
  except FileNotFoundError:
    return False
  held = os.fstat(fd)
  return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _make_dirs(directory: str, what: str) -> list[str]:
  """Creates `directory` and its missing parents; returns those it made."""
  missing = []
  while not os.path.isdir(directory):
    missing.append(directory)
    parent = os.path.dirname(directory)
    if parent == directory:
      break
    directory = parent
  created = []
  for d in reversed(missing):
    try:
      os.mkdir(d)
      created.append(d)
    except FileExistsError:
      if not os.path.isdir(d):
        _remove_dirs(created)
        raise ValueError(f"{what}: {d} is a file, not a directory") from None
    except OSError as e:
      _remove_dirs(created)
      raise ValueError(f"{what}: cannot create {d} ({e.strerror})") from None
  return created


def _remove_dirs(created: list[str]) -> None:
  for d in reversed(created):
    try:
      os.rmdir(d)  # only if empty: never removes what another wrote there
    except OSError:
      return
