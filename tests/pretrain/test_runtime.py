"""The run's model config and mesh: width scaling, replicated dimensions,
batches the mesh must split.
"""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from models.llama import abstract_params, unsplit_dims
from pretrain.cli import main, parse_args
from pretrain.config import TrainConfig
from pretrain.runtime import build_mesh, model_config
from pretrain.tokenizer import load_tokenizer
from tests.pretrain.runs import SMALL


def test_batch_that_grad_accum_does_not_split_is_one_line_error(
  tmp_path, capsys
):
  code = main(SMALL + ["--run-dir", str(tmp_path), "--grad-accum", "3"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1, err
  assert "--batch-size 8 does not split into --grad-accum 3" in err


def test_d_model_scales_heads_and_ffn_at_the_same_depth_and_head_size():
  tok = load_tokenizer(None)
  base = model_config(parse_args([]), tok)
  wide = model_config(parse_args(["--d-model", "256"]), tok)
  assert (wide.d_model, wide.n_layers, wide.head_dim) == (
    256,
    base.n_layers,
    base.head_dim,
  )
  assert (wide.n_heads, wide.d_ff) == (2 * base.n_heads, 2 * base.d_ff)
  with pytest.raises(ValueError, match="--d-model 100"):
    model_config(parse_args(["--d-model", "100"]), tok)


def test_1b_on_tensor2_replicates_d_ff_and_says_so():
  args = TrainConfig(model="1b", mesh="tensor=2", batch_size=8)
  config = model_config(args)
  mesh = build_mesh(args, config)  # accepted
  params = abstract_params(config, mesh)
  mlp = params["layers"][0]["mlp"]
  attn = params["layers"][0]["attn"]
  assert mlp["up_proj"]["kernel"].sharding.spec == P("fsdp", None)
  assert mlp["down_proj"]["kernel"].sharding.spec == P(None, "fsdp")
  assert attn["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
  (note,) = unsplit_dims(config, mesh)
  assert "5461" in note and "tensor = 2" in note and "72 parameter" in note
