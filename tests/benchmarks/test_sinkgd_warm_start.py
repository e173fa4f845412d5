"""benchmarks/sinkgd_warm_start.py: a short run writes finite residuals."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

import multinorm_optax as mo
from benchmarks import sinkgd_warm_start


def test_recovered_sinkhorn_output_has_the_residual_of_g_l():
  g = jax.random.normal(jax.random.key(0), (12, 20))  # paper view (m, n)
  g_l = mo.alternate_normalizers(g, [mo.row_l2, mo.col_l2], 2)
  update = -0.05 * 3e-2 * g_l.T  # as the recipe steps a Flax (in, out) kernel
  recovered = sinkgd_warm_start.as_sinkhorn_output(update)
  np.testing.assert_allclose(recovered, g_l, rtol=1e-5, atol=1e-6)
  assert float(mo.fixed_point_residual([mo.row_l2, mo.col_l2], recovered)) > 0
  assert bool(jnp.all(sinkgd_warm_start.as_sinkhorn_output(0 * update) == 0))


def test_short_run_writes_json_and_table(tmp_path):
  result = sinkgd_warm_start.main(
    ["--steps", "12", "--variants", "cold_l5,warm_l1", "--out", str(tmp_path)]
  )
  saved = json.loads((tmp_path / "sinkgd_warm_start.json").read_text())
  assert (
    set(saved["variants"]) == {"cold_l5", "warm_l1"} == set(result["variants"])
  )
  for v in saved["variants"].values():
    r = np.array(v["mean_residual_per_step"])
    assert r.shape == (12,) and np.isfinite(r).all() and (r >= 0).all()
    assert v["matrices"] > 0 and np.isfinite(v["final_train_loss_last_10"])
  # Five rounds are far closer to the fixed point than one.
  assert (
    saved["variants"]["cold_l5"]["median_mean_residual_from_step_10"]
    < saved["variants"]["warm_l1"]["median_mean_residual_from_step_10"]
  )
  assert "| warm_l1 |" in (tmp_path / "sinkgd_warm_start.md").read_text()
