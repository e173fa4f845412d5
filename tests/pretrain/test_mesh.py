"""pretrain/mesh.py: matching optimizer-state leaves to the parameters they copy."""

import jax
import jax.numpy as jnp
import optax

import multinorm_optax as mo
from pretrain import mesh as meshlib


def test_map_like_params_matches_moments_by_path_not_by_shape():
  # Two matrices of one shape: only the path can tell their moments apart.
  params = {
    "embed": jnp.zeros((10, 4)),
    "mlp": {"up": jnp.zeros((4, 4)), "down": jnp.zeros((4, 4))},
    "norm": {"scale": jnp.ones(4)},
  }
  name_of = {
    id(leaf): jax.tree_util.keystr(path, simple=True, separator="/")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }
  for tx, adam_leaves in [
    (optax.adamw(1e-3), ["embed", "mlp/down", "mlp/up", "norm/scale"]),
    # sinkgd keeps AdamW moments for the embedding and norm scale only.
    (mo.sinkgd(1e-3), ["embed", "norm/scale"]),
  ]:
    state = jax.eval_shape(tx.init, params)
    found = meshlib.map_like_params(
      lambda p: name_of[id(p)], state, params, "-"
    )
    for path, name in jax.tree_util.tree_leaves_with_path(found):
      where = jax.tree_util.keystr(path, simple=True, separator="/")
      if name != "-":
        assert where.endswith(name), (where, name)
    copies = sorted(n for n in jax.tree.leaves(found) if n != "-")
    assert copies == sorted(adam_leaves * 2)  # mu and nu, once each
