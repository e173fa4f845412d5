"""Tests for models/llama.py: shapes, parameter counts, causality, RoPE,
sharding layout and a short overfitting run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from models import llama

# Small enough to compile in seconds, and exercising grouped-query attention.
SMALL = llama.get_config("tiny", n_layers=2, n_kv_heads=2, max_seq_len=32)


def _tokens(seed, shape, vocab=SMALL.vocab_size):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


_forward = nnx.jit(lambda model, tokens: model(tokens))


def _num_params(model_or_state):
  return sum(
    x.size for x in jax.tree.leaves(nnx.state(model_or_state, nnx.Param))
  )


@pytest.fixture(scope="module")
def small_model():
  return llama.Llama(SMALL, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  auto = (jax.sharding.AxisType.Auto,) * 3
  return jax.make_mesh((2, 2, 2), llama.MESH_AXES, axis_types=auto)


def test_logits_are_float32_batch_by_time_by_vocab(small_model):
  logits = _forward(small_model, _tokens(0, (3, 16)))
  assert logits.shape == (3, 16, SMALL.vocab_size)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_params_are_float32_and_weight_matrices_are_2d_fan_in_fan_out(
  small_model,
):
  d, f, v = SMALL.d_model, SMALL.d_ff, SMALL.vocab_size
  q, kv = SMALL.n_heads * SMALL.head_dim, SMALL.num_kv_heads * SMALL.head_dim
  expected = {
    "embed/embedding": (v, d),
    "lm_head/kernel": (d, v),
    "norm/scale": (d,),
    "layers/1/attn_norm/scale": (d,),
    "layers/1/attn/q_proj/kernel": (d, q),
    "layers/1/attn/k_proj/kernel": (d, kv),
    "layers/1/attn/v_proj/kernel": (d, kv),
    "layers/1/attn/o_proj/kernel": (q, d),
    "layers/1/mlp_norm/scale": (d,),
    "layers/1/mlp/gate_proj/kernel": (d, f),
    "layers/1/mlp/up_proj/kernel": (d, f),
    "layers/1/mlp/down_proj/kernel": (f, d),
  }
  params = {
    "/".join(map(str, path)): v[...]
    for path, v in nnx.to_flat_state(nnx.state(small_model, nnx.Param))
  }
  for path, shape in expected.items():
    assert params[path].shape == shape, path
  assert all(p.dtype == jnp.float32 for p in params.values())
  assert all(p.ndim in (1, 2) for p in params.values())


def test_tied_embeddings_drop_the_lm_head():
  config = llama.get_config("tiny", n_layers=1, tie_embeddings=True)
  model = llama.Llama(config, rngs=nnx.Rngs(0))
  assert not hasattr(model, "lm_head")
  assert _forward(model, _tokens(0, (1, 8))).shape == (1, 8, config.vocab_size)


@pytest.mark.parametrize("name", list(llama.CONFIGS))
def test_count_params_equals_built_model(name):
  config = llama.get_config(name)
  abstract = nnx.eval_shape(lambda: llama.Llama(config, rngs=nnx.Rngs(0)))
  assert _num_params(abstract) == llama.count_params(config)


@pytest.mark.parametrize(
  "overrides", [dict(n_kv_heads=1), dict(n_kv_heads=2, tie_embeddings=True)]
)
def test_count_params_equals_built_model_with_gqa_and_tying(overrides):
  config = llama.get_config("tiny", **overrides)
  abstract = nnx.eval_shape(lambda: llama.Llama(config, rngs=nnx.Rngs(0)))
  assert _num_params(abstract) == llama.count_params(config)


def test_count_params_matches_galore_sizes():
  exact = {
    name: llama.count_params(llama.get_config(name))
    for name in ("tiny", "60m", "130m", "350m", "1b", "7b")
  }
  assert exact == {
    "tiny": 869_504,
    "60m": 58_073_600,
    "130m": 134_105_856,
    "350m": 367_969_280,
    "1b": 1_339_082_752,
    "7b": 6_738_415_616,  # LLaMA-7B's count
  }
  galore_millions = {"60m": 58, "130m": 134, "350m": 368, "1b": 1339}
  for name, millions in galore_millions.items():
    assert abs(exact[name] / 1e6 - millions) / millions < 0.02, name


def test_get_config_rejects_unknown_names_and_applies_overrides():
  with pytest.raises(ValueError, match="unknown model 'x'; choose one of: "):
    llama.get_config("x")
  config = llama.get_config("60m", n_layers=2)
  assert config.n_layers == 2 and config.d_model == 512
  assert config.head_dim == 64 and config.num_kv_heads == 8


def test_changing_a_future_token_never_changes_earlier_logits(small_model):
  tokens = _tokens(1, (2, 24))
  changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % SMALL.vocab_size)
  before, after = _forward(small_model, tokens), _forward(small_model, changed)
  np.testing.assert_allclose(before[:, :10], after[:, :10], rtol=0, atol=1e-6)
  assert not np.allclose(before[:, 10:], after[:, 10:])


def test_rope_score_depends_only_on_relative_position():
  dim, theta = 64, 10000.0
  q, k = jax.random.normal(jax.random.key(0), (2, dim), jnp.float32)

  def score(i, j):
    rq = llama.rope(q[None, None, :], jnp.array([i]), theta=theta)
    rk = llama.rope(k[None, None, :], jnp.array([j]), theta=theta)
    return float(jnp.sum(rq * rk))

  for offset in (0, 1, 5, 37):
    scores = [score(j + offset, j) for j in (0, 3, 50, 200)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4, atol=1e-4)
  assert abs(score(5, 0) - score(0, 0)) > 1e-3  # position does matter


def test_rope_is_a_rotation():
  x = jax.random.normal(jax.random.key(0), (7, 3, 16), jnp.float32)
  y = llama.rope(x, jnp.arange(7), theta=10000.0)
  np.testing.assert_allclose(
    jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5
  )
  np.testing.assert_allclose(y[0], x[0])  # position 0 is not rotated


def test_every_param_has_a_partition_spec_on_mesh_axes(small_model):
  specs = llama.param_partition_specs(small_model)
  flat_params = nnx.to_flat_state(nnx.state(small_model))
  flat_specs = dict(nnx.to_flat_state(specs))
  assert len(flat_specs) == len(flat_params)
  for path, param in flat_params:
    spec = flat_specs[path].get_value()
    assert isinstance(spec, PartitionSpec), path
    assert len(spec) == param[...].ndim, path
    for axis in spec:
      axes = axis if isinstance(axis, tuple) else (axis,)
      assert all(a is None or a in llama.MESH_AXES for a in axes), (path, spec)
  assert flat_specs[("lm_head", "kernel")].get_value() == PartitionSpec(
    "fsdp", "tensor"
  )
  down_proj = flat_specs[("layers", 0, "mlp", "down_proj", "kernel")]
  assert down_proj.get_value() == PartitionSpec("tensor", "fsdp")
  assert flat_specs[("norm", "scale")].get_value() == PartitionSpec(None)


def test_specs_for_a_mesh_replicate_dimensions_the_mesh_does_not_divide(mesh):
  config = llama.get_config("1b", n_layers=1)
  abstract = nnx.eval_shape(lambda: llama.Llama(config, rngs=nnx.Rngs(0)))
  declared = dict(nnx.to_flat_state(llama.param_partition_specs(abstract)))
  fitted = dict(nnx.to_flat_state(llama.param_partition_specs(abstract, mesh)))
  gate = ("layers", 0, "mlp", "gate_proj", "kernel")  # (2048, 5461)
  assert declared[gate].get_value() == PartitionSpec("fsdp", "tensor")
  assert fitted[gate].get_value() == PartitionSpec("fsdp", None)
  q_proj = ("layers", 0, "attn", "q_proj", "kernel")
  assert fitted[q_proj].get_value() == declared[q_proj].get_value()


def test_sharded_model_places_params_by_spec_and_matches_unsharded(
  mesh, small_model
):
  model = llama.create_sharded_model(SMALL, mesh, seed=0)
  specs = dict(nnx.to_flat_state(llama.param_partition_specs(model)))
  reference = dict(nnx.to_flat_state(nnx.state(small_model)))
  for path, param in nnx.to_flat_state(nnx.state(model)):
    value = param[...]
    assert value.sharding.mesh.shape == mesh.shape, path
    assert value.sharding.spec == specs[path].get_value(), path
    # Same random draws; jit may round the normal sampling differently.
    np.testing.assert_allclose(value, reference[path][...], rtol=1e-6)

  tokens = _tokens(2, (4, 16))
  expected = _forward(small_model, tokens)
  with jax.set_mesh(mesh):
    logits = _forward(model, tokens)
  assert logits.sharding.spec == PartitionSpec(("data", "fsdp"), None, "tensor")
  np.testing.assert_allclose(logits, expected, atol=2e-2, rtol=2e-2)


def test_sharded_model_builds_and_runs_inside_a_one_device_mesh():
  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.make_mesh(
    (1, 1, 1), llama.MESH_AXES, axis_types=auto, devices=jax.devices()[:1]
  )
  config = llama.get_config("tiny", n_layers=1, max_seq_len=8)
  with jax.set_mesh(mesh):
    model = llama.create_sharded_model(config, mesh, seed=0)
    logits = _forward(model, _tokens(0, (2, 8)))
  assert logits.shape == (2, 8, config.vocab_size)
  assert model.lm_head.kernel[...].sharding.mesh.shape == mesh.shape


def test_tiny_model_overfits_one_batch(next_token_losses):
  model = llama.Llama(SMALL, rngs=nnx.Rngs(0))
  losses = next_token_losses(model, optax.adam(1e-3), _tokens(3, (4, 33)), 50)
  assert losses[0] > 5.0  # ~log(256) at init
  assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------ at scale:
# attention implementations, rematerialization, scanned layers

F32 = llama.get_config(
  "tiny", n_layers=3, n_kv_heads=2, max_seq_len=32, dtype=jnp.float32
)


def _loss_and_grads(config, params, tokens):
  """Mean logit-weighted loss of `config`'s model at `params` (a pure dict)."""
  graphdef = nnx.graphdef(llama.abstract_model(config))
  weights = jax.random.normal(jax.random.key(9), (config.vocab_size,))

  def loss(params):
    logits = nnx.merge(graphdef, nnx.State(params))(tokens)
    return jnp.mean(logits @ weights)

  return jax.jit(jax.value_and_grad(loss))(params)


def _params(config, seed=0):
  return nnx.to_pure_dict(
    nnx.state(llama.Llama(config, rngs=nnx.Rngs(seed)), nnx.Param)
  )


def _stack_layers(params, n_layers):
  """An unrolled model's params in the scanned layout: layer i of every
  block parameter at index i of a new leading axis."""
  layers = [params["layers"][i] for i in range(n_layers)]
  return {
    **{k: v for k, v in params.items() if k != "layers"},
    "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers),
  }


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_dot_product_attention_equals_einsum_reference(n_kv_heads):
  """jax.nn.dot_product_attention (XLA) and the einsum reference agree in
  float32, with plain, grouped-query and multi-query heads."""
  q = jax.random.normal(jax.random.key(0), (2, 24, 4, 16))
  k = jax.random.normal(jax.random.key(1), (2, 24, n_kv_heads, 16))
  v = jax.random.normal(jax.random.key(2), (2, 24, n_kv_heads, 16))
  ref = llama.attention_reference(q, k, v)
  out = llama.attention(q, k, v, "xla")
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # Causal: the first query sees only the first key.
  np.testing.assert_allclose(
    ref[:, 0], jnp.repeat(v[:, 0], 4 // n_kv_heads, axis=1), rtol=1e-6
  )


def test_attention_auto_is_xla_off_gpu_and_cudnn_on_gpu_in_bf16():
  assert llama.attention_impl("auto", jnp.float32, 64) in ("xla",)
  want = "cudnn" if jax.default_backend() == "gpu" else "xla"
  assert llama.attention_impl("auto", jnp.bfloat16, 64) == want
  assert llama.attention_impl("einsum", jnp.bfloat16, 64) == "einsum"


def test_model_with_each_attention_gives_the_reference_logits_and_grads():
  tokens = _tokens(3, (2, 32))
  params = _params(F32)
  ref = _loss_and_grads(
    F32.__class__(**{**vars(F32), "attention": "einsum"}), params, tokens
  )
  out = _loss_and_grads(
    F32.__class__(**{**vars(F32), "attention": "xla"}), params, tokens
  )
  np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("remat", ["block", "full"])
def test_remat_gives_the_gradients_of_no_remat(remat, scan_layers):
  base = dataclasses.replace(F32, scan_layers=scan_layers)
  params = _params(base)
  tokens = _tokens(4, (2, 32))
  ref = _loss_and_grads(base, params, tokens)
  out = _loss_and_grads(dataclasses.replace(base, remat=remat), params, tokens)
  np.testing.assert_allclose(out[0], ref[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(ref[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scanned_layers_compute_the_unrolled_model():
  """Stacking an unrolled model's layer params gives the scanned model the
  same loss and, stacked the same way, the same gradients."""
  scanned = dataclasses.replace(F32, scan_layers=True)
  params = _params(F32)
  stacked = _stack_layers(params, F32.n_layers)
  abstract = nnx.to_pure_dict(llama.abstract_state(scanned))
  assert jax.tree.map(lambda x: x.shape, stacked) == jax.tree.map(
    lambda x: x.shape, abstract
  )
  assert stacked["layers"]["attn"]["q_proj"]["kernel"].shape == (3, 128, 128)
  tokens = _tokens(5, (2, 32))
  ref_loss, ref_grads = _loss_and_grads(F32, params, tokens)
  loss, grads = _loss_and_grads(scanned, stacked, tokens)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for a, b in zip(
    jax.tree.leaves(grads),
    jax.tree.leaves(_stack_layers(ref_grads, F32.n_layers)),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scanned_params_keep_their_sharding_with_a_replicated_layer_axis():
  config = dataclasses.replace(SMALL, scan_layers=True)
  specs = nnx.to_pure_dict(
    llama.param_partition_specs(llama.abstract_state(config))
  )
  layer = specs["layers"]
  assert layer["attn"]["q_proj"]["kernel"] == PartitionSpec(
    None, "fsdp", "tensor"
  )
  assert layer["mlp"]["down_proj"]["kernel"] == PartitionSpec(
    None, "tensor", "fsdp"
  )
  assert layer["attn_norm"]["scale"] == PartitionSpec(None, None)
