"""The LLaMA model, its configs and its sharding layout."""

from models.llama import CONFIGS
from models.llama import LOGICAL_AXIS_RULES
from models.llama import MESH_AXES
from models.llama import Llama
from models.llama import LlamaConfig
from models.llama import count_params
from models.llama import create_sharded_model
from models.llama import get_config
from models.llama import param_partition_specs
from models.llama import rope
