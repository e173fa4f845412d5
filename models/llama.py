"""LLaMA decoder in Flax NNX, with its configs and its sharding layout.

The architecture of GaLore's LLaMA benchmark: pre-norm blocks of RMSNorm ->
causal multi-head attention with rotary position embeddings (optionally
grouped-query) -> RMSNorm -> SwiGLU MLP, then a final RMSNorm and an untied LM
head (tying is a config flag). No biases anywhere.

Layout conventions the optimizer relies on:

* every weight matrix is a plain 2-D kernel in Flax's (fan_in, fan_out) layout,
  with a leading layer axis under ``scan_layers``, as ``weight_dimension_numbers``
  declares to multinorm_optax; the hidden matrices are those not under
  ``embed`` or ``lm_head``;
* module names make readable paths, e.g. ``layers/0/attn/q_proj/kernel``;
* each parameter declares its logical sharding axes next to its initializer,
  and ``LOGICAL_AXIS_RULES`` maps them onto the mesh axes ``MESH_AXES``.

References:
  Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023.
  Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
  Projection", 2024.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from multinorm_optax.layout import DimensionNumbers

MESH_AXES = ("data", "fsdp", "tensor")
# "einsum" is the tested reference; the others go through
# jax.nn.dot_product_attention ("auto": cuDNN's flash attention on a GPU in
# bf16/fp16, XLA elsewhere).
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum")
# What the backward pass keeps of each block (the rest is recomputed):
# none: every activation; block: the outputs of its weight matmuls (dots
# without batch dimensions; norms, rope, SwiGLU and attention are recomputed);
# full: nothing but the block's input.
REMAT_POLICIES = {
  "none": None,
  "block": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "full": jax.checkpoint_policies.nothing_saveable,
}

# Logical axis name -> mesh axis (or axes, or None = replicated). Parameters are
# fully sharded over 'fsdp' along d_model and tensor-parallel over 'tensor'
# along heads / d_ff / vocab; activations split their batch over data x fsdp.
LOGICAL_AXIS_RULES = (
  ("batch", ("data", "fsdp")),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and precision of a LLaMA model.

  ``dtype`` is the compute dtype of activations and matmuls; parameters are
  stored in ``param_dtype``. ``n_kv_heads=None`` means plain multi-head
  attention (as many key/value heads as query heads).

  How it is computed, not what: ``attention`` (one of ``ATTENTION_IMPLS``),
  ``remat`` (a key of ``REMAT_POLICIES``), and ``scan_layers``: the blocks as
  one ``nnx.scan`` over parameters stacked along a leading layer axis
  (``layers/attn/q_proj/kernel`` of shape (n_layers, fan_in, fan_out)), so
  compile time does not grow with depth. ``scan_layers`` changes the
  parameter tree; the other two do not.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int | None
  d_ff: int
  max_seq_len: int = 256
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  dtype: Any = jnp.bfloat16
  param_dtype: Any = jnp.float32
  attention: str = "auto"
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(
        f"unknown attention {self.attention!r}; choose one of "
        f"{', '.join(ATTENTION_IMPLS)}"
      )
    if self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"unknown remat {self.remat!r}; choose one of "
        f"{', '.join(REMAT_POLICIES)}"
      )
    if self.d_model % self.n_heads:
      raise ValueError(
        f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
      )
    if self.n_heads % self.num_kv_heads:
      raise ValueError(
        f"n_heads={self.n_heads} is not a multiple of "
        f"n_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(
        f"rotary embeddings need an even head_dim, got {self.head_dim}"
      )

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def num_kv_heads(self) -> int:
    return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


CONFIGS: dict[str, LlamaConfig] = {
  # Byte-level vocabulary; trains a few hundred steps on a laptop CPU.
  "tiny": LlamaConfig(
    vocab_size=256,
    d_model=128,
    n_layers=4,
    n_heads=4,
    n_kv_heads=None,
    d_ff=352,
  ),
  # GaLore's benchmark sizes (LLaMA tokenizer, context 256). The 1b d_ff
  # (5461, odd) is kept for GaLore's parameter count; it cannot be split
  # over 'tensor', so ``param_partition_specs(..., mesh)`` replicates it.
  "60m": LlamaConfig(
    vocab_size=32000,
    d_model=512,
    n_layers=8,
    n_heads=8,
    n_kv_heads=None,
    d_ff=1376,
  ),
  "130m": LlamaConfig(
    vocab_size=32000,
    d_model=768,
    n_layers=12,
    n_heads=12,
    n_kv_heads=None,
    d_ff=2048,
  ),
  "350m": LlamaConfig(
    vocab_size=32000,
    d_model=1024,
    n_layers=24,
    n_heads=16,
    n_kv_heads=None,
    d_ff=2736,
  ),
  "1b": LlamaConfig(
    vocab_size=32000,
    d_model=2048,
    n_layers=24,
    n_heads=32,
    n_kv_heads=None,
    d_ff=5461,
  ),
  # LLaMA-7B's shape (6.74B parameters): the next size up, for capacity.
  "7b": LlamaConfig(
    vocab_size=32000,
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=None,
    d_ff=11008,
  ),
}


def get_config(name: str, **overrides: Any) -> LlamaConfig:
  """The named config from ``CONFIGS``, with ``overrides`` replacing fields."""
  if name not in CONFIGS:
    raise ValueError(
      f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}"
    )
  return dataclasses.replace(CONFIGS[name], **overrides)


def count_params(config: LlamaConfig) -> int:
  """Number of parameters of ``Llama(config)``, from the config alone.

  With V = vocab, D = d_model, F = d_ff, H = n_heads, K = n_kv_heads,
  h = head_dim, L = n_layers:
      embed V D + head V D (0 if tied) + D (final norm)
      + L (2 D H h + 2 D K h + 3 D F + 2 D).
  """
  c = config
  attn = 2 * c.d_model * c.n_heads * c.head_dim
  attn += 2 * c.d_model * c.num_kv_heads * c.head_dim
  mlp = 3 * c.d_model * c.d_ff
  block = attn + mlp + 2 * c.d_model
  embed = c.vocab_size * c.d_model
  head = 0 if c.tie_embeddings else c.d_model * c.vocab_size
  return embed + head + c.n_layers * block + c.d_model


# ---------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------


def _sharded(initializer, *logical_axes: str | None):
  """``initializer`` annotated with the logical axes of the array it creates.

  The Variable also carries ``LOGICAL_AXIS_RULES``, so every Flax utility that
  reads the annotation (``nnx.get_partition_spec``, ``nnx.eval_shape`` under a
  mesh) sees mesh axes. Eager sharding is off: it would need a mesh at
  creation, and the model is also built without one (tests, one device);
  ``create_sharded_model`` places the parameters instead.
  """
  return nnx.with_partitioning(
    initializer,
    logical_axes,
    sharding_rules=LOGICAL_AXIS_RULES,
    eager_sharding=False,
  )


def fit_spec(
  spec: PartitionSpec, shape: tuple[int, ...], mesh_shape: dict[str, int]
) -> PartitionSpec:
  """The one divisibility rule: a dimension whose mesh axes do not divide it
  evenly is replicated (kept whole on every device) instead of split.

  jit refuses uneven shardings; the alternative, refusing the mesh, would rule
  out tensor parallelism for the 1b model (d_ff = 5461) altogether. The cost is
  memory and redundant compute on that dimension, which ``unsplit_dims`` names
  so that train.py can say so.
  """
  parts = []
  for dim, axes in zip(shape, spec):
    names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    ways = math.prod(mesh_shape[name] for name in names)
    parts.append(axes if dim % ways == 0 else None)
  return PartitionSpec(*parts)


def param_partition_specs(
  tree: Any, mesh: jax.sharding.Mesh | None = None
) -> Any:
  """Mesh PartitionSpecs of a model's parameters.

  Args:
    tree: a ``Llama`` (concrete or from ``nnx.eval_shape``) or its
      ``nnx.State``.
    mesh: if given, each spec is passed through ``fit_spec``: a dimension that
      its mesh axes do not divide evenly is replicated (e.g. the 1b model's
      d_ff = 5461 over 'tensor').

  Returns:
    A tree with the structure of ``nnx.state(tree)`` in which each Variable
    holds the ``PartitionSpec`` of its value: its declared logical axes
    resolved through ``LOGICAL_AXIS_RULES`` to axes of ``MESH_AXES``.
  """
  state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
  specs = nnx.get_partition_spec(state)
  if mesh is None:
    return specs
  return jax.tree.map(
    lambda spec, value: fit_spec(spec, value.shape, dict(mesh.shape)),
    specs,
    state,
  )


def unsplit_dims(config: LlamaConfig, mesh: jax.sharding.Mesh) -> list[str]:
  """One line per (size, mesh axes) pair that ``fit_spec`` replicates on
  ``mesh``, naming how many parameters it touches and the first of them."""
  state = abstract_state(config)
  declared = jax.tree.leaves(param_partition_specs(state), is_leaf=_is_spec)
  found: dict[tuple, list[str]] = {}
  for (path, leaf), spec in zip(
    jax.tree_util.tree_leaves_with_path(state), declared, strict=True
  ):
    fitted = fit_spec(spec, leaf.shape, dict(mesh.shape))
    for dim, want, got in zip(leaf.shape, spec, fitted):
      if want is not None and got is None:
        axes = want if isinstance(want, tuple) else (want,)
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        found.setdefault((dim, axes), []).append(name.removesuffix(".value"))
  return [
    f"a dimension of {dim} does not divide over "
    f"{'x'.join(axes)} = {math.prod(mesh.shape[a] for a in axes)}: "
    f"replicated in {len(names)} parameter(s) (e.g. {names[0]}); a mesh axis "
    f"that divides {dim} splits it"
    for (dim, axes), names in found.items()
  ]


def weight_dimension_numbers(path: str, leaf) -> DimensionNumbers | None:
  """Where a parameter's fan_in and fan_out axes are, for multinorm_optax.

  Every weight is ``(fan_in, fan_out)`` in its last two axes; a leading axis
  is the layer axis of ``scan_layers`` (a batch axis: each layer's matrix is
  normalized on its own). Declared, so that the recipes' label rule (only 2-D
  or declared leaves are normalized) treats the scanned layers as matrices.
  None for vectors (norm scales): not matrices.
  """
  del path
  if leaf.ndim < 2:
    return None
  return DimensionNumbers(leaf.ndim - 2, leaf.ndim - 1)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def abstract_model(config: LlamaConfig) -> Llama:
  """``Llama(config)`` with ``jax.ShapeDtypeStruct`` leaves: nothing allocated."""
  return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def abstract_state(config: LlamaConfig) -> nnx.State:
  """The ``nnx.Param`` state of ``abstract_model(config)``."""
  return nnx.state(abstract_model(config), nnx.Param)


def abstract_params(
  config: LlamaConfig, mesh: jax.sharding.Mesh | None = None
) -> dict:
  """The parameters as a plain dict of ``jax.ShapeDtypeStruct`` (the tree the
  optimizer sees: ``layers/0/attn/q_proj/kernel``, ...), from shapes alone.

  With ``mesh``, each leaf carries the ``NamedSharding`` that
  ``create_sharded_model`` gives the real parameter, so ``jax.eval_shape`` or
  ``jit(...).lower`` on it sees the sharded run.
  """
  state = abstract_state(config)
  shapes = nnx.to_pure_dict(state)
  if mesh is None:
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), shapes
    )
  specs = nnx.to_pure_dict(param_partition_specs(state, mesh))
  return jax.tree.map(
    lambda spec, x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(mesh, spec)
    ),
    specs,
    shapes,
    is_leaf=_is_spec,
  )


def create_sharded_model(
  config: LlamaConfig, mesh: jax.sharding.Mesh, *, seed: int = 0
) -> Llama:
  """A ``Llama`` whose parameters are created directly sharded on ``mesh``.

  The parameters are initialised inside one ``jax.jit`` whose output
  shardings are the declared specs, so no device ever holds a full copy.
  May be called with or without ``mesh`` set as the current mesh.
  The values are those of ``Llama(config, rngs=nnx.Rngs(seed))`` (up to
  float rounding of the jitted initialisers).
  """

  def create():
    return Llama(config, rngs=nnx.Rngs(seed))

  graphdef, abstract = nnx.split(nnx.eval_shape(create))
  shardings = jax.tree.map(
    lambda spec: NamedSharding(mesh, spec),
    param_partition_specs(abstract, mesh),
  )
  state = jax.jit(lambda: nnx.state(create()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def _constrain(x: jax.Array, *logical_axes: str | None) -> jax.Array:
  """Pins the layout of an activation when a mesh over MESH_AXES is active.

  Without the constraint XLA may keep activations replicated after a gather
  or a sharded matmul; with no mesh (tests, a single device) it is a no-op.
  Written for meshes with ``AxisType.Auto`` axes, where the constraint is a
  hint to XLA's partitioner.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  rules = dict(LOGICAL_AXIS_RULES)
  spec = PartitionSpec(*(rules[a] if a else None for a in logical_axes))
  return jax.lax.with_sharding_constraint(x, spec)


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

_init = nnx.initializers.normal(stddev=0.02)


def rope(x: jax.Array, positions: jax.Array, *, theta: float) -> jax.Array:
  """Rotary position embedding, rotate-half convention (as in HF LLaMA).

  With d = x.shape[-1] and w_k = theta^(-2k/d), feature pair
  (x_k, x_{k+d/2}) at position p is rotated by the angle p w_k:
      y_k       = x_k cos(p w_k) - x_{k+d/2} sin(p w_k)
      y_{k+d/2} = x_{k+d/2} cos(p w_k) + x_k sin(p w_k).
  Rotations compose, so <rope(q, i), rope(k, j)> depends on i - j only.

  Args:
    x: [..., T, H, d] queries or keys.
    positions: [T] integer positions.
    theta: base of the rotation frequencies.

  Returns:
    The rotated ``x``, in its dtype (computed in float32).
  """
  d = x.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2 / d)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq  # [T, d/2]
  cos = jnp.cos(angles)[:, None, :]  # broadcast over heads
  sin = jnp.sin(angles)[:, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  y = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return y.astype(x.dtype)


class RMSNorm(nnx.Module):
  """y = scale * x / sqrt(mean(x^2) + eps), the mean over the last axis."""

  def __init__(self, dim: int, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.eps = config.norm_eps
    self.dtype = config.dtype
    self.scale = nnx.Param(
      _sharded(nnx.initializers.ones, "norm")(
        rngs.params(), (dim,), config.param_dtype
      )
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    # The mean of squares in bf16 loses the small entries; reduce in float32.
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(
      jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps
    )
    return (x32 * inv_rms * self.scale[...]).astype(self.dtype)


def _linear(
  config: LlamaConfig,
  fan_in: int,
  fan_out: int,
  in_axis: str,
  out_axis: str,
  *,
  rngs: nnx.Rngs,
) -> nnx.Linear:
  """A bias-free (fan_in, fan_out) kernel sharded as (in_axis, out_axis)."""
  return nnx.Linear(
    fan_in,
    fan_out,
    use_bias=False,
    dtype=config.dtype,
    param_dtype=config.param_dtype,
    kernel_init=_sharded(_init, in_axis, out_axis),
    rngs=rngs,
  )


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Causal grouped-query attention as two einsums: the tested reference.

  For query head n in group g = n // (H / K) of the K key/value heads:
      o_n = softmax(q_n k_g^T / sqrt(h) + causal mask) v_g,
  logits and softmax in float32. It materializes the [B, K, G, T, T] logits.

  Args:
    q: [B, T, H, h] queries; k, v: [B, T, K, h] keys and values.

  Returns:
    [B, T, H, h] in ``v``'s dtype.
  """
  b, t, n, d = q.shape
  kv = k.shape[2]
  q = (q * (d**-0.5)).reshape(b, t, kv, n // kv, d)
  logits = jnp.einsum(
    "btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32
  )
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  # A finite floor rather than -inf keeps a fully masked row NaN-free.
  logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, n, d)


def attention_impl(impl: str, dtype: Any, head_dim: int) -> str:
  """The implementation ``impl`` runs as: "auto" is "cudnn" (flash attention)
  on a GPU in bf16/fp16 with a head_dim cuDNN takes (a multiple of 8, at most
  128), "xla" otherwise."""
  if impl != "auto":
    return impl
  if (
    jax.default_backend() == "gpu"
    and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    and head_dim % 8 == 0
    and head_dim <= 128
  ):
    return "cudnn"
  return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str):
  """Causal grouped-query attention of [B, T, H, h] queries over [B, T, K, h]
  keys/values: ``attention_reference`` or ``jax.nn.dot_product_attention``
  (the same math; ``impl`` as in ``attention_impl``)."""
  impl = attention_impl(impl, q.dtype, q.shape[-1])
  if impl == "einsum":
    return attention_reference(q, k, v)
  return jax.nn.dot_product_attention(
    q, k, v, is_causal=True, implementation=impl
  )


class Attention(nnx.Module):
  """Causal (grouped-query) self-attention with rotary embeddings; the
  attention itself is ``attention(..., config.attention)``."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    q_dim, kv_dim = c.n_heads * c.head_dim, c.num_kv_heads * c.head_dim
    linear = functools.partial(_linear, config, rngs=rngs)
    self.q_proj = linear(c.d_model, q_dim, "embed", "heads")
    self.k_proj = linear(c.d_model, kv_dim, "embed", "heads")
    self.v_proj = linear(c.d_model, kv_dim, "embed", "heads")
    self.o_proj = linear(q_dim, c.d_model, "heads", "embed")

  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    b, t, _ = x.shape
    kv = c.num_kv_heads
    positions = jnp.arange(t)
    q = self.q_proj(x).reshape(b, t, c.n_heads, c.head_dim)
    k = self.k_proj(x).reshape(b, t, kv, c.head_dim)
    v = self.v_proj(x).reshape(b, t, kv, c.head_dim)
    q = rope(q, positions, theta=c.rope_theta)
    k = rope(k, positions, theta=c.rope_theta)
    out = attention(q, k, v, c.attention)
    return self.o_proj(out.reshape(b, t, c.n_heads * c.head_dim))


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    linear = functools.partial(_linear, config, rngs=rngs)
    self.gate_proj = linear(config.d_model, config.d_ff, "embed", "mlp")
    self.up_proj = linear(config.d_model, config.d_ff, "embed", "mlp")
    self.down_proj = linear(config.d_ff, config.d_model, "mlp", "embed")

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
  """Pre-norm residual block: x += attn(norm(x)); x += mlp(norm(x))."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(config.d_model, config, rngs=rngs)
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.d_model, config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x))
    x = x + self.mlp(self.mlp_norm(x))
    return _constrain(x, "batch", None, None)


class Llama(nnx.Module):
  """LLaMA decoder: tokens int32[B, T] -> next-token logits float32[B, T, V].

  Computes in ``config.dtype``; parameters are ``config.param_dtype``.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(
      config.vocab_size,
      config.d_model,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      embedding_init=_sharded(_init, "vocab", "embed"),
      rngs=rngs,
    )
    if config.scan_layers:
      # One Block whose parameters gain a leading layer axis (replicated:
      # every device holds its share of every layer, as when unrolled).
      @nnx.split_rngs(splits=config.n_layers)
      @nnx.vmap(transform_metadata={nnx.PARTITION_NAME: None})
      def stacked(rngs):
        return Block(config, rngs=rngs)

      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List(
        [Block(config, rngs=rngs) for _ in range(config.n_layers)]
      )
    self.norm = RMSNorm(config.d_model, config, rngs=rngs)
    if not config.tie_embeddings:
      self.lm_head = _linear(
        config, config.d_model, config.vocab_size, "embed", "vocab", rngs=rngs
      )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    c = self.config
    if tokens.shape[-1] > c.max_seq_len:
      raise ValueError(
        f"sequence length {tokens.shape[-1]} exceeds "
        f"max_seq_len={c.max_seq_len}"
      )
    # FSDP: all-gather the table's d_model shards before the lookup. Looking
    # rows up in a d_model-sharded table yields d_model-sharded activations
    # that XLA can only turn batch-sharded by replicating them in full.
    table = self.embed.embedding[...].astype(c.dtype)
    table = _constrain(table, "vocab", None)
    x = _constrain(jnp.take(table, tokens, axis=0), "batch", None, None)

    def apply(block, x):
      return block(x)

    if c.remat != "none":
      apply = nnx.remat(apply, policy=REMAT_POLICIES[c.remat])
    if c.scan_layers:
      scan = nnx.scan(apply, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      x = scan(self.layers, x)
    else:
      for block in self.layers:
        x = apply(block, x)
    x = self.norm(x)
    logits = self.embed.attend(x) if c.tie_embeddings else self.lm_head(x)
    return _constrain(logits.astype(jnp.float32), "batch", None, "vocab")
