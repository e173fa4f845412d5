"""Model FLOPs utilization: the model's training FLOPs per token, the peak
FLOP/s of the device it runs on, and the MFU of a measured token rate.

    mfu = tokens_per_s * flops_per_token(config, T) / (devices * peak)

References:
  Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022,
  Appendix B (the 6N + 12 L d T count of training FLOPs per token).
"""

from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip (no sparsity), from the vendors' data sheets.
# Matched against jax's device_kind in order: the first key contained in it
# (case-insensitive) wins, so the more specific names come first.
PEAK_FLOPS = {
  "H100 PCIe": 756e12,
  "H100": 989e12,  # SXM
  # SXM: NVIDIA's H200 data sheet gives 1,979 TFLOP/s bf16 *with* 2:4
  # sparsity; dense is half, the same tensor cores as the H100 SXM.
  "H200": 989e12,
  "A100": 312e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,  # v5e
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,  # v5p reports itself as "TPU v5"
  "TPU v6 lite": 918e12,  # v6e (Trillium)
  "TPU v6e": 918e12,
}


def flops_per_token(config, seq_len: int) -> float:
  """Training FLOPs per token of a LLaMA ``config`` at context ``seq_len``:

      6 N + 12 L d T

  where N counts the parameters that multiply activations (every weight
  matrix and the LM head, not the embedding table, a lookup), L = n_layers,
  d = n_heads * head_dim and T = seq_len. 6 N: a multiply-add (2 FLOPs) per
  weight per token in the forward pass, twice that in the backward pass. The
  attention term: q k^T and probs v take 2 * 2 T d per token and layer
  forward, x3 with the backward pass; causal masking is not discounted
  (PaLM's convention). Rematerialization's recomputation is not counted:
  MFU measures useful work.
  """
  from models.llama import count_params

  embed = config.vocab_size * config.d_model
  n = count_params(config) - embed
  if config.tie_embeddings:  # the table doubles as the LM head
    n += embed
  attention = 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
  return 6.0 * n + attention


def peak_flops(device: jax.Device | None = None) -> float | None:
  """Dense bf16 peak FLOP/s of ``device`` (default: the first), or None
  for a device not in ``PEAK_FLOPS`` (a CPU, an unlisted GPU)."""
  device = jax.devices()[0] if device is None else device
  kind = device.device_kind.lower()
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind:
      return flops
  return None


def mfu(
  tokens_per_s: float, flops_per_token: float, devices: int, peak: float | None
) -> float | None:
  """Model FLOPs utilization: achieved model FLOP/s over the devices' peak."""
  if not peak or not tokens_per_s:
    return None
  return tokens_per_s * flops_per_token / (devices * peak)


def peak_memory_bytes(devices) -> int | None:
  """The largest ``peak_bytes_in_use`` over this process's ``devices`` where
  the backend reports it (GPU, TPU), else None (CPU). Other processes' devices
  cannot be asked."""
  peaks = []
  for d in devices:
    if d.process_index != jax.process_index():
      continue
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return max(peaks) if peaks else None
