"""The LLaMA model, its configs and its sharding layout."""

from models.llama import (
  CONFIGS,
  LOGICAL_AXIS_RULES,
  MESH_AXES,
  Llama,
  LlamaConfig,
  count_params,
  create_sharded_model,
  get_config,
  param_partition_specs,
  rope,
)

__all__ = [
  "CONFIGS",
  "LOGICAL_AXIS_RULES",
  "MESH_AXES",
  "Llama",
  "LlamaConfig",
  "count_params",
  "create_sharded_model",
  "get_config",
  "param_partition_specs",
  "rope",
]
