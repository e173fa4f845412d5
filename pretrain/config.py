"""The run's configuration: one typed dataclass that `python train.py` fills
from its flags and that benchmarks build directly.

    from pretrain.config import TrainConfig
    config = TrainConfig(model="350m", optimizer="adamw", batch_size=64)

Each field is the flag of the same name (`batch_size` is `--batch-size`) and
has the flag's default; `train.py --help` says what each one means.
"""

from __future__ import annotations

import dataclasses
import os

OPTIMIZERS = (
  "sinkgd",
  "swan",
  "adamw",
  "adafactor",
  "muon",
  "sgd",
  "sinkgd_stateless",
)
# Peak learning rates that train the tiny model well in the default run. For
# sinkgd and swan this is also the AdamW rate of embeddings/head/norms; their
# hidden matrices step alpha * lr along the normalized gradient.
DEFAULT_LR = {
  "sinkgd": 0.03,
  "swan": 0.03,
  "adamw": 0.003,
  "adafactor": 0.01,
  "muon": 0.02,
  "sgd": 0.3,
  "sinkgd_stateless": 0.03,
}


@dataclasses.dataclass
class TrainConfig:
  """Everything that describes a training run (see `train.py --help`).

  `lr=None` takes the optimizer's entry of `DEFAULT_LR`.
  """

  # model and optimizer
  model: str = "tiny"
  d_model: int | None = None
  optimizer: str = "sinkgd"
  lr: float | None = None
  adam_lr: float | None = None
  alpha: float = 0.05
  num_iters: int = 5
  sinkgd_impl: str = "auto"
  warm_start: bool = False
  overflow_guard: str = "max_abs"
  momentum: float | None = None  # None: no momentum buffer (sinkgd, swan)
  nesterov: bool = False
  momentum_order: str = "normalize_then_average"
  swan_whiten: str | None = None  # None: multinorm_optax.swan's default mode
  update_scale: str = "rms"
  ns_steps: int | None = None  # None: the whitening mode's default
  weight_decay: float = 0.0
  decay_embeddings: bool = False
  warmup: int | None = None
  final_lr_fraction: float = 0.1
  grad_clip: float = 1.0
  dtype: str = "auto"
  remat: str = "none"
  scan_layers: bool = False
  attention: str = "auto"
  # data
  data: str | None = None
  tokenizer: str | None = None
  steps: int = 600
  batch_size: int = 16
  seq_len: int = 128
  grad_accum: int = 1
  seed: int = 0
  # outputs
  run_dir: str = os.path.join("runs", "default")
  ckpt_dir: str | None = None
  resume: bool = False
  ckpt_every: int = 200
  keep: int = 3
  eval_every: int = 100
  eval_batches: int = 8
  log_every: int = 10
  metrics: str | None = None
  tensorboard: bool = False
  no_progress: bool = False
  inject_nan_at: int | None = None
  # devices
  mesh: str | None = None
  devices: int | None = None
  cpu_devices: int | None = None
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def __post_init__(self):
    if self.lr is None and self.optimizer in DEFAULT_LR:
      self.lr = DEFAULT_LR[self.optimizer]
