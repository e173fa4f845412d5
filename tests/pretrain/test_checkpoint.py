"""pretrain/checkpoint.py: checksums, damaged steps, foreign folders, orbax's debris.

Faults are injected into real orbax checkpoints of a small state: bytes overwritten in
place, a file truncated, a run record garbled, an unrelated numeric folder.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.checkpoint import (
  Checkpoints,
  array_checksum,
  complete_steps,
  tree_checksums,
)

RECORD = {
  "model": {"name": "m"},
  "tokenizer": {"name": "byte"},
  "optimizer": {"name": "sgd"},
  "data": {"--batch-size": 8, "--seq-len": 32},
  "args": {},
}


def make_state(step: int):
  key = jax.random.key(step)
  return {
    "params": {
      "big": jax.random.normal(key, (256, 512), jnp.float32),
      "small": jnp.arange(7, dtype=jnp.bfloat16) * step,
    },
    "step": jnp.asarray(step, jnp.int32),
  }


def abstract(state):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    state,
  )


def save_steps(directory, steps, keep=0):
  ckpt = Checkpoints(directory, RECORD, resume=True, keep=keep)
  ckpt.open()
  for s in steps:
    ckpt.save(s, make_state(s))
  ckpt.close()


def resume(directory):
  """(Checkpoints, restored state) as train.py resumes."""
  ckpt = Checkpoints(directory, RECORD, resume=True, keep=0)
  ckpt.open()
  return ckpt, ckpt.restore(abstract(make_state(0)))


def largest_file(step_dir):
  files = [
    os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names
  ]
  return max(files, key=os.path.getsize)


def snapshot(directory):
  return sorted(
    (
      os.path.relpath(os.path.join(r, f), directory),
      os.path.getsize(os.path.join(r, f)),
    )
    for r, _, fs in os.walk(directory)
    for f in fs
  )


def assert_state_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ the checksum


@pytest.mark.parametrize(
  "dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.uint8, jnp.bool_]
)
def test_checksum_changes_with_any_bit_and_not_with_the_sharding(dtype):
  x = jax.random.normal(jax.random.key(0), (64, 24)) * 100
  x = x.astype(dtype) if dtype != jnp.bool_ else x > 0
  mesh = jax.make_mesh((8,), ("fsdp",))
  sharded = jax.device_put(
    x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  )
  base = np.asarray(array_checksum(x))
  np.testing.assert_array_equal(
    np.asarray(jax.jit(array_checksum)(sharded)), base
  )
  bits = np.asarray(x).reshape(-1).view(np.uint8).copy()
  rng = np.random.default_rng(0)
  for _ in range(20):  # one flipped bit anywhere
    flipped = bits.copy()
    i = rng.integers(flipped.size)
    flipped[i] ^= np.uint8(1 << rng.integers(8 if dtype != jnp.bool_ else 1))
    y = jnp.asarray(flipped.view(np.asarray(x).dtype).reshape(x.shape))
    assert (np.asarray(array_checksum(y)) != base).any()
  # Two elements swapped: the same words, in other places.
  swapped = np.asarray(x).copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  if not np.array_equal(swapped, np.asarray(x)):
    assert (np.asarray(array_checksum(jnp.asarray(swapped))) != base).any()


def test_tree_checksums_name_every_array_by_its_path():
  sums = tree_checksums(make_state(1))
  assert sorted(sums) == [
    "['params']['big']",
    "['params']['small']",
    "['step']",
  ]
  assert all(len(v) == 16 for v in sums.values())
  assert tree_checksums(make_state(2)) != sums


# ------------------------------------------------------------------ damaged checkpoints


@pytest.mark.parametrize("fault", ["overwrite 8 bytes", "truncate"])
def test_damaged_latest_step_is_moved_aside_and_the_previous_one_restored(
  tmp_path, fault
):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1, 2])
  victim = largest_file(directory / "2")
  size = os.path.getsize(victim)
  if fault == "truncate":
    os.truncate(victim, size // 2)
  else:
    with open(victim, "r+b") as f:  # in place, in the middle of the data
      f.seek(size // 2)
      f.write(b"\xde\xad\xbe\xef\x12\x34\x56\x78")
  ckpt, state = resume(directory)
  assert ckpt.latest_step == 1
  assert_state_equal(state, make_state(1))
  notes = [n for n in ckpt.notes if "damaged" in n]
  assert len(notes) == 1 and "checkpoint step 2 is damaged" in notes[0], notes
  assert "\n" not in notes[0]
  # Moved aside, never deleted: every byte of it is still there.
  assert complete_steps(directory) == [1]
  moved = (
    tmp_path / "ckpt.damaged" / "2" / os.path.relpath(victim, directory / "2")
  )
  assert os.path.getsize(moved) == (size // 2 if fault == "truncate" else size)
  ckpt.close()


def test_no_intact_step_stops_with_one_line(tmp_path):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1])
  os.truncate(largest_file(directory / "1"), 10)
  ckpt = Checkpoints(directory, RECORD, resume=True, keep=0)
  ckpt.open()
  with pytest.raises(ValueError, match="no intact checkpoint left") as e:
    ckpt.restore(abstract(make_state(0)))
  assert "\n" not in str(e.value)
  assert os.path.isdir(tmp_path / "ckpt.damaged" / "1")
  ckpt.close()


def test_garbled_run_record_falls_back_to_the_previous_step(tmp_path):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1, 2])
  (record,) = [  # the JSON file orbax wrote for the item
    p
    for p in (directory / "2" / "run").rglob("*")
    if p.is_file() and '"sgd"' in p.read_text(errors="replace")
  ]
  with open(record) as f:
    text = f.read()
  with open(record, "w") as f:  # still valid JSON, another optimizer
    f.write(text.replace('"sgd"', '"sgx"'))
  ckpt, state = resume(directory)
  assert ckpt.latest_step == 1
  assert any("checkpoint step 2 is damaged" in n for n in ckpt.notes)
  assert_state_equal(state, make_state(1))
  ckpt.close()


# ------------------------------------------------------------------ what orbax wrote


def test_unrelated_numeric_folders_are_left_alone(tmp_path):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1, 2])
  for name in ("2024", "3"):  # a user's folders, not checkpoints
    os.makedirs(directory / name / "notes")
    (directory / name / "notes" / "a.txt").write_text("mine")
  before = snapshot(directory / "2024") + snapshot(directory / "3")
  ckpt, state = resume(directory)
  assert ckpt.latest_step == 2
  assert_state_equal(state, make_state(2))
  ckpt.save(4, make_state(4))
  ckpt.save(5, make_state(5))
  ckpt.close()
  # --keep 1 lets orbax delete old steps: ours only.
  save_steps(directory, [6], keep=1)
  assert complete_steps(directory) == [6]
  assert sorted(os.listdir(directory)) == ["2024", "3", "6"]
  assert snapshot(directory / "2024") + snapshot(directory / "3") == before
  assert not os.path.exists(tmp_path / "ckpt.unfinished")
  assert not os.path.exists(tmp_path / "ckpt.damaged")


def test_interrupted_save_is_moved_aside_not_deleted(tmp_path):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1])
  debris = directory / "2.orbax-checkpoint-tmp-99"
  os.makedirs(debris / "state")
  (debris / "state" / "partial").write_bytes(b"x" * 100)
  ckpt, state = resume(directory)
  assert ckpt.latest_step == 1
  assert any("moved unfinished saves" in n for n in ckpt.notes)
  assert (
    tmp_path / "ckpt.unfinished" / debris.name / "state" / "partial"
  ).read_bytes() == b"x" * 100
  ckpt.close()


def test_no_step_with_an_intact_run_record_is_refused_and_nothing_moves(
  tmp_path,
):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1])
  for p in (directory / "1" / "run").rglob("*"):
    if p.is_file() and '"sgd"' in p.read_text(errors="replace"):
      p.write_text("{not json")
  before = snapshot(directory)
  with pytest.raises(ValueError, match="no intact checkpoint") as e:
    Checkpoints(directory, RECORD, resume=True, keep=0)
  assert "\n" not in str(e.value)
  assert snapshot(directory) == before
