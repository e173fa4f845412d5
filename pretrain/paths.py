"""Checks on output paths, made before a run builds or writes anything.

A run that trains for hours and then cannot write its checkpoint or its metrics has
wasted the allocation; these checks refuse such a path up front, with one line naming
the flag and the path at fault. They create nothing.
"""

from __future__ import annotations

import os
import tempfile


def check_writable_dir(path: str, flag: str) -> None:
  """Raises ValueError unless `path` is, or can be created as, a writable directory.

  Walks up to the nearest existing ancestor: that must be a directory into which
  this process can write. Writability is probed by creating (and at once removing)
  an anonymous temporary file there, which also catches read-only mounts;
  `os.access` is asked first so that the common case needs no write. Remote paths
  (`gs://...`) are not probed here: their errors surface on the first save.

  Args:
    path: the directory the run will write into.
    flag: what to call it in the message, e.g. "--ckpt-dir".
  """
  if "://" in str(path):
    return
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    parent = os.path.dirname(existing)
    if parent == existing:
      break
    existing = parent
  if not os.path.isdir(existing):
    where = "" if existing == path else f" (in {path})"
    raise ValueError(
      f"{flag} {path}: {existing} is a file, not a directory{where}"
    )
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"{flag} {path}: {existing} is not writable")
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ValueError(
      f"{flag} {path}: cannot write in {existing} ({e.strerror})"
    ) from None
