"""train.py: the command, sharded runs, checkpoints, multi-process runs, bad input.

Runs share work: each distinct training run happens once per module (module-scoped
fixtures) and several tests read its result. In-process runs see the session's 8
simulated CPU devices (tests/conftest.py); subprocesses are used only for the
command as users type it and for the 2-process run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import multinorm_optax as mo
import train
from models import llama
from models.llama import abstract_params, unsplit_dims
from pretrain import mesh as meshlib
from pretrain.checkpoint import complete_steps
from pretrain.tokenizer import load_tokenizer

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# A small real corpus (the stdlib's json package: ~32k train tokens) keeps runs short.
DATA = os.path.join(sysconfig.get_paths()["stdlib"], "json")
STEPS = 6
# 6 steps of 8 x 32 tokens; no evaluation unless a test asks for it.
SMALL = [
  "--data",
  DATA,
  "--steps",
  str(STEPS),
  "--batch-size",
  "8",
  "--seq-len",
  "32",
  "--eval-batches",
  "0",
  "--log-every",
  "1",
  "--no-progress",
]


def run(tmp, *flags):
  """train.train in this process; returns its summary."""
  return train.train(train.parse_args(SMALL + ["--run-dir", str(tmp), *flags]))


def losses(summary):
  return np.array([h["loss"] for h in summary["history"]])


def snapshot(directory):
  """Every file under `directory` with its size and mtime: to see that nothing moved."""
  found = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      found[os.path.relpath(os.path.join(root, name), directory)] = (
        st.st_size,
        st.st_mtime_ns,
      )
  return found


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  return run(
    tmp_path_factory.mktemp("one"), "--devices", "1", "--ckpt-every", "0"
  )


@pytest.fixture(scope="module")
def fsdp8(tmp_path_factory):
  """fsdp=8 with checkpoints at steps 3 and 6, an eval at 3 and 6, and metrics."""
  tmp = tmp_path_factory.mktemp("fsdp8")
  summary = run(
    tmp,
    "--mesh",
    "fsdp=8",
    "--ckpt-every",
    "3",
    "--keep",
    "0",
    "--eval-batches",
    "1",
    "--eval-every",
    "3",
  )
  return summary, tmp


@pytest.fixture(scope="module")
def fsdp4_tensor2(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fsdp4_tensor2")
  return run(
    tmp, "--mesh", "fsdp=4,tensor=2", "--ckpt-every", "3", "--keep", "0"
  ), tmp


def resume_from_step3(saved_tmp, new_tmp, *flags, damage=None):
  """Copies a run dir and resumes it after step 3's save: its last checkpoint
  dropped (as if killed during it, leaving orbax's temporary directory), or
  kept but damaged in place by `damage(step_dir)`. A folder of the user's,
  `ckpt/5/`, sits among the checkpoints."""
  shutil.copytree(saved_tmp, new_tmp)
  ckpt = os.path.join(new_tmp, "ckpt")
  if damage is None:
    shutil.rmtree(os.path.join(ckpt, str(STEPS)))
    os.makedirs(
      os.path.join(ckpt, f"{STEPS}.orbax-checkpoint-tmp-1234", "state")
    )
  else:
    damage(os.path.join(ckpt, str(STEPS)))
  os.makedirs(os.path.join(ckpt, "5", "notes"))
  return run(new_tmp, "--ckpt-every", "3", "--keep", "0", "--resume", *flags)


# ------------------------------------------------------------------ the command


def test_python_train_py_runs_and_writes_metrics_and_checkpoints(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "train.py"),
      "--steps",
      "4",
      "--batch-size",
      "8",
      "--seq-len",
      "32",
      "--eval-every",
      "2",
      "--eval-batches",
      "1",
      "--ckpt-every",
      "2",
      "--keep",
      "1",
      "--log-every",
      "1",
      "--run-dir",
      str(tmp_path / "run"),
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "done: 4 steps" in proc.stdout and "val loss" in proc.stdout
  records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  train_steps = [r["step"] for r in records if r["kind"] == "train"]
  assert train_steps == [1, 2, 3, 4]
  assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
  assert all(
    np.isfinite(r["loss"]) and r["tokens_per_s"] > 0
    for r in records
    if r["kind"] == "train"
  )
  # A CPU's peak FLOP/s and memory are unknown: MFU and peak memory are null
  # (and the closing line says n/a); tokens/s per device is there.
  last = [r for r in records if r["kind"] == "train"][-1]
  assert last["mfu"] is None and last["peak_memory_bytes"] is None
  assert last["tokens_per_s_per_device"] > 0
  assert "per device, MFU n/a)" in proc.stdout
  assert complete_steps(tmp_path / "run" / "ckpt") == [4]  # --keep 1


@pytest.fixture(scope="module")
def sharded_tiny():
  """The tiny model's params as shape/sharding stand-ins on a 4 x 2 fsdp/tensor mesh."""
  args = train.parse_args(["--mesh", "fsdp=4,tensor=2"])
  config = train.model_config(args, load_tokenizer(None))
  mesh = train.build_mesh(args, config)
  return abstract_params(config, mesh), mesh


@pytest.mark.parametrize("name", train.OPTIMIZERS)
def test_every_optimizer_builds_and_shards_its_state_like_the_params(
  name, sharded_tiny
):
  params, mesh = sharded_tiny
  args = train.parse_args(["--optimizer", name])
  tx = train.build_optimizer(name, train.make_schedule(0.01, 10), args)
  # Traced, not compiled: every optimizer accepts the model's tree.
  opt_state = jax.eval_shape(tx.init, params)
  jax.eval_shape(tx.update, params, opt_state, params)
  # Adam moments and momenta are split like their parameter.
  shardings = meshlib.shardings_like_params(
    opt_state, params, meshlib.replicated(mesh)
  )
  q = ("layers", 0, "attn", "q_proj", "kernel")
  spec = params["layers"][0]["attn"]["q_proj"]["kernel"].sharding.spec
  assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  copies = []
  for (path, leaf), sharding in zip(
    jax.tree_util.tree_leaves_with_path(opt_state), jax.tree.leaves(shardings)
  ):
    keys = tuple(
      getattr(k, "key", getattr(k, "idx", getattr(k, "name", None)))
      for k in path
    )
    if keys[-len(q) :] == q and leaf.shape == (128, 128):
      copies.append(keys)
      assert sharding.spec == spec, keys
  # sinkgd, swan and sgd keep no state for hidden matrices; adafactor factors it.
  assert len(copies) == {"adamw": 2, "muon": 1}.get(name, 0), copies


def _three_adamw_steps(tx, params, grads):
  state = tx.init(params)
  for g in grads:  # step 0 has lr 0 (warmup), so take three
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _leaf(tree, path):
  return functools.reduce(lambda t, k: t[k], path, tree)


def test_adamw_with_adam_lr_steps_matrices_at_lr_and_the_rest_at_adam_lr():
  params = nnx.to_pure_dict(
    nnx.state(
      llama.Llama(llama.get_config("tiny"), rngs=nnx.Rngs(0)), nnx.Param
    )
  )
  leaves, treedef = jax.tree.flatten(params)
  grads = []
  for i in range(3):
    keys = jax.random.split(jax.random.key(i), len(leaves))
    grads.append(
      treedef.unflatten(
        [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
      )
    )
  flags = ["--optimizer", "adamw", "--lr", "1e-3", "--steps", "10"]
  matrix = ("layers", 0, "mlp", "up_proj", "kernel")
  for extra, lrs in (
    (["--adam-lr", "3e-2"], {"matrix": 1e-3, "rest": 3e-2}),
    ([], {"matrix": 1e-3, "rest": 1e-3}),  # without --adam-lr: one group
  ):
    args = train.parse_args(flags + extra)
    tx = train.build_optimizer("adamw", train.make_schedule(1e-3, 10), args)
    stepped = _three_adamw_steps(tx, params, grads)
    for path, lr in (
      (matrix, lrs["matrix"]),
      (("embed", "embedding"), lrs["rest"]),
      (("layers", 0, "attn_norm", "scale"), lrs["rest"]),
    ):
      ref = _three_adamw_steps(
        optax.adamw(train.make_schedule(lr, 10), weight_decay=0.0),
        _leaf(params, path),
        [_leaf(g, path) for g in grads],
      )
      np.testing.assert_allclose(
        _leaf(stepped, path), ref, rtol=1e-6, atol=1e-7
      )
      assert not np.allclose(ref, _leaf(params, path), atol=1e-5)


def _train_steps(config, steps, grad_accum):
  """Losses and final params of `steps` train steps of `config` on 2 devices."""
  cfg = train.model_config(config)
  mesh = meshlib.make_mesh(
    {"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2]
  )
  model = llama.create_sharded_model(cfg, mesh, seed=0)
  graphdef = nnx.graphdef(model)
  tx, _ = train.make_optimizer(config)
  state, shardings = train.init_state(model, tx, mesh, 0)
  step = train.make_train_step(
    graphdef,
    tx,
    shardings,
    meshlib.batch_sharding(mesh),
    grad_clip=config.grad_clip,
    grad_accum=grad_accum,
  )
  tokens = np.random.default_rng(0).integers(0, 256, (steps, 8, 17))
  losses = []
  with jax.set_mesh(mesh):
    for batch in tokens:
      state, out = step(state, batch[:, :-1], batch[:, 1:])
      losses.append(float(out["loss"]))
  return np.array(losses), state["params"]


def assert_trees_close(a, b, rtol):
  """Every leaf of `a` within relative Frobenius distance `rtol` of `b`'s."""
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  ):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
    assert rel <= rtol, (jax.tree_util.keystr(path), rel)


def test_grad_accum_gives_the_gradient_of_the_whole_batch():
  """loss_and_grads over K = 4 microbatches of 2 sequences equals one pass
  over the batch of 8, up to float32 rounding."""
  config = llama.get_config("tiny", dtype=np.float32)
  model = llama.Llama(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  tokens = np.random.default_rng(0).integers(0, 256, (8, 17))

  def loss_fn(params, inputs, targets):
    return train.cross_entropy(nnx.merge(graphdef, params)(inputs), targets)

  args = (loss_fn, params, tokens[:, :-1], tokens[:, 1:])
  whole_loss, whole = jax.jit(train.loss_and_grads, static_argnums=(0, 4))(
    *args, 1
  )
  accum_loss, accum = jax.jit(train.loss_and_grads, static_argnums=(0, 4))(
    *args, 4
  )
  assert abs(accum_loss - whole_loss) <= 1e-5 * whole_loss
  assert_trees_close(accum, whole, 1e-5)


def test_grad_accum_gives_the_update_of_the_whole_batch():
  """3 train steps on 2 devices, batch 8 as K = 4 microbatches: the same losses
  and parameters as K = 1, up to float32 rounding. SGD, so that the check is
  of the accumulation alone: Adam's first steps divide by |g| + eps and blow
  up the rounding of near-zero gradient entries (SinkGD's embedding group
  differs by ~2e-5 there, at equal gradients to 1e-5)."""
  config = train.TrainConfig(optimizer="sgd", lr=1.0, steps=3, warmup=1)
  whole_losses, whole = _train_steps(config, 3, grad_accum=1)
  accum_losses, accum = _train_steps(config, 3, grad_accum=4)
  np.testing.assert_allclose(accum_losses, whole_losses, rtol=1e-5)
  assert_trees_close(accum, whole, 1e-5)
  assert whole_losses[-1] < whole_losses[0] - 0.01  # the steps did something


def test_batch_that_grad_accum_does_not_split_is_one_line_error(
  tmp_path, capsys
):
  code = train.main(SMALL + ["--run-dir", str(tmp_path), "--grad-accum", "3"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "--batch-size 8 does not split into --grad-accum 3" in err


@pytest.mark.parametrize(
  "name", ["sinkgd", "swan", "muon", "adamw", "sinkgd_stateless"]
)
def test_update_of_stacked_layers_is_the_per_layer_update(name):
  """With --scan-layers a kernel is (layers, fan_in, fan_out): the optimizer
  treats the layer axis as a batch axis, so its update is the stack of the
  updates of the unrolled model's per-layer kernels."""
  n = 2
  config = llama.get_config("tiny", n_layers=n)
  unrolled = llama.abstract_params(config)
  leaves, treedef = jax.tree.flatten(unrolled)
  keys = jax.random.split(jax.random.key(0), 2 * len(leaves))
  params, grads = (
    treedef.unflatten(
      [
        scale * jax.random.normal(k, x.shape)
        for k, x in zip(keys[i::2], leaves)
      ]
    )
    for i, scale in ((0, 0.02), (1, 1.0))
  )

  def stack(tree):
    return {
      **{k: v for k, v in tree.items() if k != "layers"},
      "layers": jax.tree.map(
        lambda *xs: jnp.stack(xs), *[tree["layers"][i] for i in range(n)]
      ),
    }

  tx, _ = train.make_optimizer(
    train.TrainConfig(optimizer=name, steps=10, warmup=1)
  )

  def two_updates(params, grads):
    state = tx.init(params)
    for _ in range(2):  # the first has lr 0 (warmup)
      updates, state = tx.update(grads, state, params)
    return updates

  per_layer = jax.jit(two_updates)(params, grads)
  stacked = jax.jit(two_updates)(stack(params), stack(grads))
  assert stacked["layers"]["mlp"]["up_proj"]["kernel"].shape == (n, 128, 352)
  assert_trees_close(stacked, stack(per_layer), 1e-5)


@pytest.mark.parametrize("name", ["sinkgd", "swan", "sinkgd_stateless"])
def test_update_scale_flag_scales_the_hidden_matrices_by_their_shape(name):
  params = llama.abstract_params(llama.get_config("tiny", n_layers=1))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  grads = treedef.unflatten(
    [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  )

  def second_update(rule):  # the first has lr 0 (warmup)
    args = train.parse_args(
      ["--optimizer", name, "--update-scale", rule, "--steps", "10"]
    )
    tx, _ = train.make_optimizer(args)
    state = tx.init(grads)
    for _ in range(2):
      updates, state = tx.update(grads, state, grads)
    return updates

  rms, spectral = second_update("rms"), second_update("spectral")
  labels = jax.tree.leaves(mo.default_param_labels(params))
  for path, u, u_rms, label in zip(
    jax.tree_util.tree_leaves_with_path(spectral),
    jax.tree.leaves(spectral),
    jax.tree.leaves(rms),
    labels,
  ):
    if label == "multinorm":  # Flax (fan_in, fan_out)
      factor = mo.update_scale_factor("spectral", u.shape[1], u.shape[0])
      np.testing.assert_allclose(u, factor * u_rms, rtol=1e-5, atol=1e-12)
    else:
      np.testing.assert_array_equal(u, u_rms, err_msg=str(path[0]))


def test_scanned_run_trains_and_its_checkpoint_is_refused_unrolled(
  tmp_path, capsys
):
  summary = run(
    tmp_path, "--scan-layers", "--remat", "block", "--ckpt-every", "6"
  )
  assert losses(summary)[-1] < losses(summary)[0] - 1.0
  code = train.main(
    SMALL + ["--run-dir", str(tmp_path), "--resume", "--steps", "8"]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert (
    "holds a run with a different layout (scanned layers (--scan-layers), "
    "not unrolled layers)" in err
  )


def test_cli_defaults_are_the_config_defaults(monkeypatch):
  for name in (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
  ):
    monkeypatch.delenv(name, raising=False)
  assert train.parse_args([]) == train.TrainConfig()
  config = train.parse_args(["--optimizer", "adamw", "--batch-size", "4"])
  assert config == train.TrainConfig(optimizer="adamw", batch_size=4)
  assert config.lr == train.DEFAULT_LR["adamw"]


def test_d_model_scales_heads_and_ffn_at_the_same_depth_and_head_size():
  tok = load_tokenizer(None)
  base = train.model_config(train.parse_args([]), tok)
  wide = train.model_config(train.parse_args(["--d-model", "256"]), tok)
  assert (wide.d_model, wide.n_layers, wide.head_dim) == (
    256,
    base.n_layers,
    base.head_dim,
  )
  assert (wide.n_heads, wide.d_ff) == (2 * base.n_heads, 2 * base.d_ff)
  with pytest.raises(ValueError, match="--d-model 100"):
    train.model_config(train.parse_args(["--d-model", "100"]), tok)


def test_1b_on_tensor2_replicates_d_ff_and_says_so():
  args = train.TrainConfig(model="1b", mesh="tensor=2", batch_size=8)
  config = train.model_config(args)
  mesh = train.build_mesh(args, config)  # accepted
  params = abstract_params(config, mesh)
  mlp = params["layers"][0]["mlp"]
  attn = params["layers"][0]["attn"]
  assert mlp["up_proj"]["kernel"].sharding.spec == P("fsdp", None)
  assert mlp["down_proj"]["kernel"].sharding.spec == P(None, "fsdp")
  assert attn["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
  (note,) = unsplit_dims(config, mesh)
  assert "5461" in note and "tensor = 2" in note and "72 parameter" in note


def test_mesh_that_does_not_divide_a_dimension_trains_with_it_replicated(
  tmp_path, capsys, monkeypatch
):
  """The one divisibility rule end to end: tiny with d_ff = 100 on tensor=8
  trains (d_ff whole on every device) and says so on one note line."""
  monkeypatch.setitem(
    llama.CONFIGS, "tiny_d100", llama.get_config("tiny", d_ff=100)
  )
  code = train.main(
    SMALL[:2]
    + ["--steps", "2", "--batch-size", "8", "--seq-len", "16"]
    + ["--mesh", "tensor=8", "--ckpt-every", "0", "--metrics", "none"]
    + ["--no-progress", "--run-dir", str(tmp_path), "--model", "tiny_d100"]
  )
  out = capsys.readouterr()
  assert code == 0, out.err
  assert "note: a dimension of 100 does not divide over tensor = 8" in out.out


# ------------------------------------------------------------------ meshes


@pytest.mark.parametrize(
  "name", ["fsdp8", "data2_fsdp2_tensor2", "fsdp2_grad_accum2"]
)
def test_sharded_run_matches_single_device(
  name, single_device, fsdp8, tmp_path
):
  if name == "fsdp8":
    sharded = fsdp8[0]
  elif name == "fsdp2_grad_accum2":
    sharded = run(
      tmp_path, "--devices", "2", "--grad-accum", "2", "--ckpt-every", "0"
    )
  else:
    sharded = run(
      tmp_path, "--mesh", "data=2,fsdp=2,tensor=2", "--ckpt-every", "0"
    )
  assert sharded["mesh"] != single_device["mesh"]
  np.testing.assert_allclose(
    losses(sharded), losses(single_device), rtol=1e-5, atol=1e-5
  )
  assert losses(single_device)[-1] < losses(single_device)[0] - 1.0


def test_training_reduces_validation_loss(fsdp8):
  summary, tmp = fsdp8
  assert [e["step"] for e in summary["evals"]] == [3, 6]
  assert summary["final_val_loss"] < np.log(256) - 1.0
  assert summary["final_val_ppl"] == pytest.approx(
    np.exp(summary["final_val_loss"])
  )


# ------------------------------------------------------------------ checkpoints


def test_stateless_recipe_trains_resumes_bitwise_and_refuses_another_rule(
  tmp_path, capsys
):
  flags = ("--optimizer", "sinkgd_stateless", "--devices", "1")
  saved = tmp_path / "saved"
  whole = run(saved, *flags, "--ckpt-every", "3", "--keep", "0")
  assert losses(whole)[-1] < losses(whole)[0] - 1.0
  resumed = resume_from_step3(saved, tmp_path / "run", *flags)
  assert resumed["start_step"] == 3
  np.testing.assert_array_equal(losses(resumed), losses(whole)[3:])
  # Another update-scale rule is another optimizer state: refused, one line.
  code = train.main(
    SMALL
    + ["--run-dir", str(saved), "--resume", "--steps", "8", *flags]
    + ["--update-scale", "spectral"]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "different optimizer" in err and "spectral" in err, err


def test_resume_after_interruption_is_bitwise_identical(fsdp8, tmp_path):
  uninterrupted, saved = fsdp8
  resumed = resume_from_step3(
    saved,
    tmp_path / "run",
    "--mesh",
    "fsdp=8",
    "--eval-batches",
    "1",
    "--eval-every",
    "3",
  )
  assert resumed["start_step"] == 3
  assert [h["step"] for h in resumed["history"]] == [4, 5, 6]
  np.testing.assert_array_equal(losses(resumed), losses(uninterrupted)[3:])
  assert resumed["final_val_loss"] == uninterrupted["final_val_loss"]
  # The unfinished save was moved aside (never deleted), the user's folder left
  # alone; the run saved its own last step.
  ckpt = tmp_path / "run" / "ckpt"
  assert sorted(os.listdir(ckpt)) == ["3", "5", "6"]
  assert complete_steps(ckpt) == [3, 6]
  assert os.listdir(ckpt / "5") == ["notes"]
  assert os.listdir(tmp_path / "run" / "ckpt.unfinished") == [
    f"{STEPS}.orbax-checkpoint-tmp-1234"
  ]
  # The metrics file reads as one run: steps 3..5 replayed, not duplicated.
  records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in records if r["kind"] == "train"] == list(
    range(1, STEPS + 1)
  )
  assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]


def _largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


def _overwrite_8_bytes(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x00\x11\x22\x33\x44\x55\x66\x77")


def _truncate(step_dir):
  path = _largest_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_overwrite_8_bytes, _truncate])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_before_it(
  fsdp8, tmp_path, damage, capsys
):
  uninterrupted, saved = fsdp8
  resumed = resume_from_step3(
    saved,
    tmp_path / "run",
    "--mesh",
    "fsdp=8",
    "--eval-batches",
    "1",
    "--eval-every",
    "3",
    damage=damage,
  )
  out = capsys.readouterr().out
  assert resumed["start_step"] == 3
  np.testing.assert_array_equal(losses(resumed), losses(uninterrupted)[3:])
  (note,) = [line for line in out.splitlines() if "is damaged" in line]
  assert note.startswith(f"note: checkpoint step {STEPS} is damaged"), note
  assert "ckpt.damaged" in note
  # Set aside whole, never deleted; the run saved a sound step 6 again.
  ckpt = tmp_path / "run" / "ckpt"
  assert complete_steps(ckpt) == [3, 6]
  assert os.listdir(tmp_path / "run" / "ckpt.damaged") == [str(STEPS)]


def test_checkpoint_restores_onto_a_different_mesh(fsdp4_tensor2, tmp_path):
  saved_summary, saved = fsdp4_tensor2
  resumed = resume_from_step3(
    saved, tmp_path / "run", "--mesh", "fsdp=2,tensor=4"
  )
  assert resumed["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
  np.testing.assert_allclose(
    losses(resumed), losses(saved_summary)[3:], rtol=1e-5, atol=1e-5
  )


# ------------------------------------------------------------------ multi-process


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
  flags = SMALL + ["--mesh", "data=2,fsdp=2", "--ckpt-every", "3"]
  address = f"127.0.0.1:{_free_port()}"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(REPO, "train.py"),
        *flags,
        "--cpu-devices",
        "2",
        "--run-dir",
        str(tmp_path / "multi"),
        "--coordinator",
        address,
        "--num-processes",
        "2",
        "--process-id",
        str(i),
      ],
      cwd=tmp_path,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  reference = run(
    tmp_path / "single",
    "--devices",
    "4",
    "--mesh",
    "data=2,fsdp=2",
    "--ckpt-every",
    "0",
  )
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  # Only process 0 reports (gloo prints its own connection notices from every process).
  assert "model tiny" in outputs[0][0] and "done:" in outputs[0][0]
  assert "model tiny" not in outputs[1][0] and "done:" not in outputs[1][0]
  records = read_jsonl(tmp_path / "multi" / "metrics.jsonl")
  assert [r["step"] for r in records if r["kind"] == "train"] == list(
    range(1, STEPS + 1)
  )
  multi = np.array([r["loss"] for r in records if r["kind"] == "train"])
  np.testing.assert_allclose(multi, losses(reference), rtol=1e-5, atol=1e-5)
  assert complete_steps(tmp_path / "multi" / "ckpt") == [3, 6]


# ------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("texts")
  (tmp / "short.txt").write_text("hello world\n" * 3)
  (tmp / "empty.txt").write_text("")
  (tmp / "nothing").mkdir()
  return tmp


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--optimizer", "nope"], "invalid choice: 'nope'"),
    (["--mesh", "data=two"], "size must be an integer"),
    (["--mesh", "data=2,fsdp=2,tensor=1"], "holds 4 devices but 8 are in use"),
    (["--mesh", "data=3"], "do not divide the 8 devices"),
    (
      # A fresh --ckpt-dir: resuming fsdp8's run with another batch is refused.
      ["--mesh", "fsdp=8", "--batch-size", "4", "--ckpt-dir", "{texts}/new"],
      "does not divide over data x fsdp = 8",
    ),
    (["--data", "{texts}/missing.txt"], "data not found"),
    (["--data", "{texts}/empty.txt"], "is empty"),
    (["--data", "{texts}/nothing"], "has no text files"),
    (["--seq-len", "100000"], "longer than model tiny's context of 256 tokens"),
    (
      ["--data", "{texts}/short.txt", "--seq-len", "64"]
      + ["--ckpt-dir", "{texts}/new"],
      "longer than the training data",
    ),
    (["--model", "60m"], "holds a run with a different model"),
    ([], "already holds checkpoints up to step 6; pass --resume"),
  ],
)
def test_bad_input_is_one_line_error_and_leaves_checkpoints(
  flags, message, fsdp8, tiny_text, capsys
):
  ckpt = fsdp8[1] / "ckpt"
  before = snapshot(ckpt)
  flags = [f.format(texts=tiny_text) for f in flags]
  if "already holds" not in message:
    # --resume: past the bad input, the run would go on and write to the checkpoints.
    flags.append("--resume")
  code = train.main(
    SMALL + ["--ckpt-dir", str(ckpt), "--metrics", "none"] + flags
  )
  err = capsys.readouterr().err
  assert code != 0
  assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
  assert message in err
  assert snapshot(ckpt) == before


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
  tmp_path, capsys
):
  code = train.main(
    SMALL
    + [
      "--run-dir",
      str(tmp_path),
      "--ckpt-every",
      "2",
      "--inject-nan-at",
      "4",
      "--optimizer",
      "sgd",
    ]
  )
  err = capsys.readouterr().err
  assert code == 3
  assert err.count("\n") == 1 and "loss is nan" in err and "at step 4" in err
  assert f"Last good checkpoint: {tmp_path / 'ckpt' / '4'}" in err
  assert complete_steps(tmp_path / "ckpt") == [2, 4]
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2", "4"]


@pytest.mark.parametrize(
  "flags",
  [[], ["--adam-lr", "0.001"], ["--decay-embeddings"]],
  ids=["adamw", "adamw-two-groups", "decay-embeddings"],
)
def test_adamw_weight_decay_spares_norm_scales_and_embeddings(flags):
  # Zero gradients: AdamW's update is -lr * wd * p where decay applies, else 0.
  # No warmup, so that the first step's lr is not 0 in either group.
  args = train.parse_args(
    ["--optimizer", "adamw", "--weight-decay", "0.5", "--warmup", "0"] + flags
  )
  tx = train.build_optimizer("adamw", optax.constant_schedule(0.1), args)
  model = llama.Llama(llama.get_config("tiny"), rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  grads = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = {
    jax.tree_util.keystr(p, simple=True, separator="/"): bool(np.any(u != 0))
    for p, u in jax.tree_util.tree_leaves_with_path(updates)
  }
  decay_embeddings = "--decay-embeddings" in flags
  for name, was_moved in moved.items():
    decayed = "kernel" in name or (decay_embeddings and "embed" in name)
    assert was_moved == decayed, name
  assert moved["embed/embedding"] == decay_embeddings
  assert moved["lm_head/kernel"] and not moved["norm/scale"]


# ------------------------------------------------------------------ reliability

# Runs train.main in a subprocess after making orbax's background write of the run
# record fail at the save of step 4: a fault injected where a full disk would strike.
FAIL_BACKGROUND_SAVE = """
import errno, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as h
save_fn = h.JsonCheckpointHandler._save_fn
async def failing(self, x, directory):
  if directory.parent.name.startswith("4."):  # the temporary dir of step 4
    raise OSError(errno.ENOSPC, "No space left on device")
  return await save_fn(self, x, directory)
h.JsonCheckpointHandler._save_fn = failing
import runpy
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.parametrize("steps", ["4", "6"])
def test_failed_background_save_stops_the_run_with_one_line(tmp_path, steps):
  # steps 4: the failure surfaces when the run closes; 6: at the next save.
  flags = SMALL + ["--steps", steps, "--ckpt-every", "2", "--keep", "0"]
  proc = subprocess.run(
    [sys.executable, "-c", FAIL_BACKGROUND_SAVE, *flags]
    + ["--run-dir", str(tmp_path / "run")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=240,  # before the fix, the process never exited
  )
  assert proc.returncode == train.SAVE_FAILED, proc.stderr[-3000:]
  # Our one line comes last; orbax's own account of the failure (hundreds of
  # lines of tracebacks) went to the file that line names.
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: error: saving checkpoint step 4"), last
  assert "No space left on device" in last
  orbax_log = tmp_path / "run" / "ckpt" / "orbax.log"
  good = tmp_path / "run" / "ckpt" / "2"
  assert last.endswith(
    f"last good checkpoint: {good} (orbax's log: {orbax_log})"
  ), last
  assert "Traceback" in orbax_log.read_text()
  assert "Traceback" not in proc.stderr and "absl" not in proc.stderr
  assert proc.stderr.count("train.py: error:") == 1
  assert complete_steps(tmp_path / "run" / "ckpt") == [2]


def test_save_that_raises_stops_the_run_and_keeps_earlier_checkpoints(
  tmp_path, capsys, monkeypatch
):
  import orbax.checkpoint as ocp

  save = ocp.CheckpointManager.save

  def failing(self, step, *a, **k):
    if step == 4:
      raise PermissionError(13, "Permission denied", "ckpt/4")
    return save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
  code = train.main(
    SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "2", "--keep", "0"]
  )
  err = capsys.readouterr().err
  assert code == train.SAVE_FAILED
  assert err.count("\n") == 1 and "saving checkpoint step 4" in err, err
  assert "Permission denied" in err
  assert complete_steps(tmp_path / "ckpt") == [2]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--ckpt-dir", "{file}"], "is a file, not a directory"),
    (["--ckpt-dir", "{file}/ckpt"], "is a file, not a directory"),
    (["--run-dir", "{file}"], "is a file, not a directory"),
    (["--metrics", "{dir}"], "is a directory, not a file"),
    (["--metrics", "{file}/m.jsonl"], "is a file, not a directory"),
    (["--cpu-devices", "0"], "--cpu-devices must be at least 1"),
    (["--cpu-devices", "-2"], "--cpu-devices must be at least 1"),
    (["--devices", "0"], "--devices must be at least 1"),
    (["--tokenizer", "{tok_json}"], "needs the 'tokenizers' package"),
    (["--tokenizer", "{tok_model}"], "needs the 'sentencepiece' package"),
    (["--data", "{dir}/x.bin:uint64"], "unsupported token dtype uint64"),
  ],
)
def test_bad_output_paths_and_flags_are_one_line_errors_and_write_nothing(
  flags, message, tmp_path, capsys, monkeypatch
):
  # As if the optional [hf] extra were not installed.
  monkeypatch.setitem(sys.modules, "tokenizers", None)
  monkeypatch.setitem(sys.modules, "sentencepiece", None)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "afile").write_text("not a directory")
  (tmp_path / "adir").mkdir()
  (tmp_path / "tok.json").write_text("{}")
  (tmp_path / "tok.model").write_text("")
  (tmp_path / "adir" / "x.bin").write_bytes(bytes(64))
  names = dict(
    file=tmp_path / "afile",
    dir=tmp_path / "adir",
    tok_json=tmp_path / "tok.json",
    tok_model=tmp_path / "tok.model",
  )
  flags = [f.format(**names) for f in flags]
  if "--run-dir" not in flags:
    flags += ["--run-dir", str(tmp_path / "run")]
  before = snapshot(tmp_path)
  code = train.main(SMALL + ["--ckpt-every", "2"] + flags)
  err = capsys.readouterr().err
  assert code in (1, 2)
  assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
  assert message in err
  assert snapshot(tmp_path) == before
  assert sorted(os.listdir(tmp_path)) == sorted(
    ["afile", "adir", "tok.json", "tok.model"]
  )


def test_read_only_checkpoint_dir_is_refused_before_training(
  tmp_path, capsys, monkeypatch
):
  import errno
  import tempfile

  def read_only_mount(*a, **k):  # what a read-only file system answers
    raise OSError(errno.EROFS, "Read-only file system")

  (tmp_path / "ckpt").mkdir()
  monkeypatch.setattr(tempfile, "TemporaryFile", read_only_mount)
  code = train.main(SMALL + ["--run-dir", str(tmp_path), "--metrics", "none"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "--ckpt-dir" in err and "Read-only file system" in err
  assert os.listdir(tmp_path / "ckpt") == []


@pytest.mark.skipif(
  hasattr(os, "geteuid") and os.geteuid() == 0,
  reason="root bypasses file permissions: a chmod 555 directory stays "
  "writable (the read-only mount case is tested by fault injection)",
)
def test_checkpoint_dir_without_write_permission_is_refused(tmp_path, capsys):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  ckpt.chmod(0o555)
  try:
    code = train.main(SMALL + ["--run-dir", str(tmp_path), "--metrics", "none"])
  finally:
    ckpt.chmod(0o755)
  err = capsys.readouterr().err
  assert code == 1 and "is not writable" in err and err.count("\n") == 1


def test_metrics_of_an_earlier_run_are_never_truncated(tmp_path, capsys):
  run(tmp_path, "--ckpt-every", "0")
  metrics = tmp_path / "metrics.jsonl"
  before = metrics.read_text()
  assert before.count("\n") == STEPS
  code = train.main(SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "0"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "already holds records of an earlier run; pass --resume" in err
  assert metrics.read_text() == before
  # --resume with no checkpoint to resume: step 0 again, the records aside.
  code = train.main(
    SMALL + ["--run-dir", str(tmp_path), "--ckpt-every", "0", "--resume"]
  )
  out = capsys.readouterr().out
  assert code == 0
  aside = tmp_path / "metrics.jsonl.unfinished"
  assert aside.read_text() == before
  assert f"were moved to {aside}" in out
  assert metrics.read_text().count("\n") == STEPS


@pytest.mark.parametrize(
  "flag, value", [("--batch-size", "16"), ("--seq-len", "64")]
)
def test_resume_with_other_data_windows_is_refused(flag, value, fsdp8, capsys):
  ckpt = fsdp8[1] / "ckpt"
  before = snapshot(ckpt)
  code = train.main(
    SMALL
    + ["--ckpt-dir", str(ckpt), "--metrics", "none", "--resume"]
    + ["--steps", "12", flag, value]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert flag in err and "repeat or skip" in err
  assert snapshot(ckpt) == before


# ------------------------------------------------------------------ sinkgd options

# Warm-started SR-Sinkhorn at one round, the on-demand overflow guard and a
# momentum buffer: every kind of state the sinkgd options add.
SINKGD_OPTIONS = [
  "--num-iters",
  "1",
  "--warm-start",
  "--overflow-guard",
  "on_demand",
  "--momentum",
  "0.9",
  "--nesterov",
]


@pytest.fixture(scope="module")
def sinkgd_options_sharded(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sinkgd_options")
  flags = ["--mesh", "fsdp=4,tensor=2", "--ckpt-every", "3", "--keep", "0"]
  return run(tmp, *flags, *SINKGD_OPTIONS), tmp


def test_sinkgd_options_train_on_a_mesh_and_resume_bitwise(
  sinkgd_options_sharded, tmp_path
):
  summary, saved = sinkgd_options_sharded
  assert losses(summary)[-1] < losses(summary)[0] - 1.0
  resumed = resume_from_step3(
    saved, tmp_path / "run", "--mesh", "fsdp=4,tensor=2", *SINKGD_OPTIONS
  )
  assert resumed["start_step"] == 3
  np.testing.assert_array_equal(losses(resumed), losses(summary)[3:])


def test_resume_without_the_flags_that_shape_the_state_is_refused(
  sinkgd_options_sharded, capsys
):
  ckpt = sinkgd_options_sharded[1] / "ckpt"
  before = snapshot(ckpt)
  code = train.main(
    SMALL
    + ["--ckpt-dir", str(ckpt), "--metrics", "none", "--resume"]
    + ["--mesh", "fsdp=4,tensor=2", "--momentum", "0.9"]
  )
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "holds a run with a different optimizer" in err
  assert "(sinkgd, warm_start True, not sinkgd, warm_start unset)" in err
  assert snapshot(ckpt) == before


def test_sinkgd_warm_state_is_sharded_like_its_parameter_on_fan_in(
  sharded_tiny,
):
  params, mesh = sharded_tiny
  config = train.parse_args(["--warm-start", "--momentum", "0.9"])
  tx, _ = train.make_optimizer(config)
  shardings = train.state_shardings(params, tx, mesh)["opt_state"]
  state = jax.eval_shape(tx.init, params)
  kernel = ("layers", 0, "mlp", "up_proj", "kernel")
  spec = _leaf(params, kernel).sharding.spec
  found = {}
  for (path, leaf), sharding in zip(
    jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(shardings)
  ):
    keys = tuple(
      getattr(k, "key", getattr(k, "idx", getattr(k, "name", None)))
      for k in path
    )
    if keys[-len(kernel) :] == kernel:
      found[leaf.shape] = sharding.spec
  # The momentum buffer like the kernel, the column scaling (fan_in, 1) like
  # the kernel's fan_in axis.
  fan_in, fan_out = _leaf(params, kernel).shape
  assert found == {
    (fan_in, fan_out): spec,
    (fan_in, 1): P(spec[0], None),
  }, found


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--momentum", "1.0"], "--momentum must be in [0, 1)"),
    (["--overflow-guard", "fast"], "argument --overflow-guard"),
    (["--momentum-order", "x"], "argument --momentum-order"),
  ],
)
def test_bad_sinkgd_option_is_one_line_error(flags, message, capsys):
  assert train.main(SMALL + flags) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err


def test_run_record_names_swans_default_whitening_so_a_changed_default_is_noted():
  # A run recorded before the default changed holds None; a resume now records
  # the resolved mode, so Checkpoints notes "swan_whiten None -> fast".
  args = train.parse_args(["--optimizer", "swan"])
  assert train.library_defaults(args) == {"swan_whiten": "fast"}
  explicit = train.parse_args(["--optimizer", "swan", "--swan-whiten", "exact"])
  assert train.library_defaults(explicit) == {}
  assert (
    train.library_defaults(train.parse_args(["--optimizer", "sinkgd"])) == {}
  )
