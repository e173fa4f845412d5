"""pretrain/checkpoint.py: checksums, damaged steps, foreign folders, orbax's debris.

Faults are injected into real orbax checkpoints of a small state: bytes overwritten in
place, a file truncated, a run record garbled, an unrelated numeric folder.
"""

from __future__ import annotations

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrain.checkpoint import (
  ORBAX_LOG,
  Checkpoints,
  SaveError,
  array_checksum,
  complete_steps,
  read_run_record,
  restore_params,
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


# ------------------------------------------------------------------ not damage


def test_restore_params_reads_a_relative_path_from_another_cwd(
  tmp_path, monkeypatch
):
  save_steps(tmp_path / "run" / "ckpt", [1])
  monkeypatch.chdir(tmp_path / "run")
  params = restore_params("ckpt", 1, abstract(make_state(0))["params"])
  assert_state_equal({"params": params}, {"params": make_state(1)["params"]})
  assert read_run_record("ckpt", 1) == RECORD


def test_restore_params_that_do_not_fit_is_not_called_damage(tmp_path):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1])
  before = snapshot(directory)
  params = abstract(make_state(0))["params"]
  sharding = params["big"].sharding
  wider = dict(
    params, big=jax.ShapeDtypeStruct((256, 513), jnp.float32, sharding=sharding)
  )
  with pytest.raises(ValueError) as e:
    restore_params(directory, 1, wider)
  message = str(e.value)
  assert "damaged" not in message and "is not damage" in message, message
  assert "(256, 513)" in message and "\n" not in message
  with pytest.raises(ValueError, match="there is no checkpoint step 7"):
    restore_params(directory, 7, params)
  # Real damage is still called so.
  os.truncate(largest_file(directory / "1"), 10)
  with pytest.raises(ValueError, match="step 1 of .* is damaged"):
    restore_params(directory, 1, params)
  assert snapshot(directory) != before  # (only by our truncation)


def test_resume_that_fails_without_damage_moves_nothing(tmp_path):
  directory = tmp_path / "ckpt"
  save_steps(directory, [1, 2])
  before = snapshot(directory)
  ckpt = Checkpoints(directory, RECORD, resume=True, keep=0)
  ckpt.open()
  state = abstract(make_state(0))
  sharding = state["params"]["big"].sharding
  state["params"]["big"] = jax.ShapeDtypeStruct(
    (8, 8), jnp.float32, sharding=sharding
  )
  with pytest.raises(ValueError, match="is not damage") as e:
    ckpt.restore(state)
  ckpt.close()
  assert "step 2" in str(e.value)
  assert snapshot(directory) == before
  assert not os.path.exists(tmp_path / "ckpt.damaged")


# ------------------------------------------------------------------ orbax's log


def test_failed_save_puts_orbax_log_in_a_file_and_says_where(
  tmp_path, monkeypatch, caplog, capfd
):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as h

  save_fn = h.JsonCheckpointHandler._save_fn

  async def full_disk(self, x, directory):  # orbax's background write
    if directory.parent.name.startswith("2."):  # step 2's temporary dir
      raise OSError(errno.ENOSPC, "No space left on device")
    return await save_fn(self, x, directory)

  monkeypatch.setattr(h.JsonCheckpointHandler, "_save_fn", full_disk)
  directory = tmp_path / "ckpt"
  ckpt = Checkpoints(directory, RECORD, resume=True, keep=0)
  ckpt.open()
  ckpt.save(1, make_state(1))
  ckpt.save(2, make_state(2))
  with pytest.raises(SaveError) as e:
    ckpt.close()
  log = directory / ORBAX_LOG
  assert str(e.value).endswith(f"(orbax's log: {log})")
  assert "\n" not in str(e.value)
  text = log.read_text()
  assert "Traceback" in text and "No space left on device" in text
  # None of it went to the run's own output.
  assert not [r for r in caplog.records if "orbax" in r.pathname]
  assert "Traceback" not in capfd.readouterr().err
  assert complete_steps(directory) == [1]
