"""multinorm-optax: stateless multi-normalized gradient descent for Optax.

MNGD, SinkGD and SWAN (arXiv 2502.06742, 2412.13148) as optax transforms.
"""

from multinorm_optax.alias import (
  default_param_labels,
  default_weight_decay_mask,
  sinkgd,
  sinkgd_stateless,
  stateless_param_labels,
  swan,
)
from multinorm_optax.layout import DimensionNumbers
from multinorm_optax.multinorm import (
  ScaleBySinkGDState,
  alternate_normalizers,
  fixed_point_residual,
  multinorm,
  scale_by_sinkgd,
  scale_by_swan,
)
from multinorm_optax.normalizers import (
  col_l2,
  rms,
  row_l2,
  row_standardize,
  sign,
  whiten,
)
from multinorm_optax.update_scale import (
  UPDATE_SCALES,
  scale_by_shape,
  update_scale_factor,
)

__version__ = "0.1.0"

__all__ = [
  "UPDATE_SCALES",
  "DimensionNumbers",
  "ScaleBySinkGDState",
  "alternate_normalizers",
  "col_l2",
  "default_param_labels",
  "default_weight_decay_mask",
  "fixed_point_residual",
  "multinorm",
  "rms",
  "row_l2",
  "row_standardize",
  "scale_by_shape",
  "scale_by_sinkgd",
  "scale_by_swan",
  "sign",
  "sinkgd",
  "sinkgd_stateless",
  "stateless_param_labels",
  "swan",
  "update_scale_factor",
  "whiten",
]
