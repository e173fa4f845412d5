r"""How far from SR-Sinkhorn's fixed point each step's update is, along a real run.

    python benchmarks/sinkgd_warm_start.py            # CPU: 3 tiny runs, ~1 min

For each variant (cold L=1, cold L=5, warm-started L=1; ``--variants``),
train.py's tiny model is trained by train.py's own step (``pretrain.step.train_step``,
nothing re-implemented) with sinkgd at its default lr for ``--steps`` steps
(batch 16 x 64 tokens of the stdlib corpus, warmup 10% then cosine, clip 1,
seed 0). The optimizer is chained with a transform that keeps the step's
update, so after every step we read the update ``U = -alpha lr_t G_L`` of each
hidden matrix (weight decay 0), recover ``G_L`` in the paper's ``(fan_out,
fan_in)`` view (its Frobenius norm is ``sqrt(mn)``, as it ends on a column
step) and compute

.. math:: r(G_L) = \max(\lVert P_{row}G_L - G_L\rVert_F,
   \lVert P_{col}G_L - G_L\rVert_F) / \lVert G_L\rVert_F

(:func:`multinorm_optax.fixed_point_residual`). Zero on the fixed point of SR-Sinkhorn, the update the paper's
``L -> infinity`` would give. Step 0 (lr 0 under warmup, zero update) is
skipped. Reported per variant: the mean over matrices at a few steps, the
median and max over steps 10..end, and the mean train loss of the last 10
steps (one seed: not a convergence comparison; benchmarks/convergence.py
is). Outputs: ``--out`` (default benchmarks/results/sinkgd_warm_start_cpu)
``sinkgd_warm_start.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import multinorm_optax as mo
import pretrain.data
import pretrain.optim
import pretrain.runtime
import pretrain.state
import pretrain.step
from benchmarks import common
from models.llama import create_sharded_model
from pretrain import mesh as meshlib
from pretrain.config import TrainConfig
from pretrain.tokenizer import load_tokenizer

# Variant -> the TrainConfig fields that make it.
VARIANTS = {
  "cold_l1": dict(num_iters=1),
  "cold_l5": dict(num_iters=5),
  "warm_l1": dict(num_iters=1, warm_start=True),
}
REPORT_STEPS = (1, 2, 5, 10, 50)


def keep_updates() -> optax.GradientTransformation:
  """Passes updates through and keeps a copy as its state (to read them)."""
  return optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda updates, state, params=None: (updates, updates),
  )


def as_sinkhorn_output(u: jax.Array) -> jax.Array:
  """A Flax (in, out) update ``-alpha lr G_L`` back to ``G_L`` in the paper's
  (out, in) view: ``G_L`` ends on a column step, so its Frobenius norm is
  ``sqrt(m n)`` exactly and the factor is recovered from the norm."""
  g = -jnp.swapaxes(u, -1, -2).astype(jnp.float32)
  m, n = g.shape[-2:]
  norm = jnp.sqrt(jnp.sum(g * g, axis=(-2, -1), keepdims=True))
  return g * mo.normalizers.safe_ratio(jnp.sqrt(jnp.float32(m * n)), norm)


def matrix_residuals(updates, labels) -> jax.Array:
  """fixed_point_residual of every hidden matrix's ``G_L``, one value per matrix."""
  out = [
    mo.fixed_point_residual([mo.row_l2, mo.col_l2], as_sinkhorn_output(u))
    for u, label in zip(jax.tree.leaves(updates), jax.tree.leaves(labels))
    if label == mo.alias.MATRIX
  ]
  return jnp.stack([jnp.ravel(r) for r in out]).ravel()


def run_variant(name: str, steps: int, seed: int) -> dict:
  config = TrainConfig(
    model="tiny",
    optimizer="sinkgd",
    steps=steps,
    batch_size=16,
    seq_len=64,
    seed=seed,
    eval_batches=0,
    devices=1,
    **VARIANTS[name],
  )
  tokenizer = load_tokenizer(config.tokenizer)
  model_config = pretrain.runtime.model_config(config, tokenizer)
  _, sampler, _ = pretrain.data.load_data(config, tokenizer)
  mesh = pretrain.runtime.build_mesh(config, model_config)
  model = create_sharded_model(model_config, mesh, seed=seed)
  graphdef = nnx.graphdef(model)
  tx = optax.chain(pretrain.optim.make_optimizer(config)[0], keep_updates())
  state, shardings = pretrain.state.init_state(model, tx, mesh, seed)
  labels = mo.default_param_labels(state["params"])
  step_fn = pretrain.step.make_train_step(
    graphdef,
    tx,
    shardings,
    meshlib.batch_sharding(mesh),
    grad_clip=config.grad_clip,
  )
  residuals_of = jax.jit(functools.partial(matrix_residuals, labels=labels))
  to_global = functools.partial(
    meshlib.global_batch, mesh, global_rows=config.batch_size
  )
  residuals, loss = [], []
  for step in range(steps):
    inputs, targets = (to_global(x) for x in sampler.batch(step))
    state, metrics = step_fn(state, inputs, targets)
    residuals.append(np.asarray(residuals_of(state["opt_state"][1])))
    loss.append(float(metrics["loss"]))
  r = np.stack(residuals)  # (steps, matrices)
  mean = r.mean(axis=1)
  return {
    "config": VARIANTS[name],
    "matrices": int(r.shape[1]),
    "mean_residual_per_step": [float(x) for x in mean],
    "max_residual_per_step": [float(x) for x in r.max(axis=1)],
    "median_mean_residual_from_step_10": float(np.median(mean[10:])),
    "max_residual_from_step_10": float(r[10:].max()),
    "final_train_loss_last_10": float(np.mean(loss[-10:])),
    "loss": loss,
  }


def markdown(result: dict) -> str:
  meta = result["metadata"]
  cols = [s for s in REPORT_STEPS if s < meta["steps"]]
  lines = [
    f"Fixed-point residual of the sinkgd update along a {meta['steps']}-step "
    f"tiny run ({meta['machine']}, jax {meta['jax']}, {meta['date'][:10]}).",
    f"Command: `{meta['command']}`",
    "",
    "r(G_L) = max(||P_row G_L - G_L||, ||P_col G_L - G_L||) / ||G_L||, mean "
    "over the "
    f"{next(iter(result['variants'].values()))['matrices']} hidden matrices; "
    "each variant trains its own run (one seed).",
    "",
    "| variant | "
    + " | ".join(f"step {s}" for s in cols)
    + " | median from step 10 | max from step 10 | train loss (last 10) |",
    "|---|" + "---:|" * (len(cols) + 3),
  ]
  for name, v in result["variants"].items():
    per_step = v["mean_residual_per_step"]
    lines.append(
      f"| {name} | "
      + " | ".join(f"{per_step[s]:.2e}" for s in cols)
      + f" | {v['median_mean_residual_from_step_10']:.2e} | "
      f"{v['max_residual_from_step_10']:.2e} | "
      f"{v['final_train_loss_last_10']:.3f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--variants",
    default=",".join(VARIANTS),
    help=f"comma-separated, from {', '.join(VARIANTS)}",
  )
  p.add_argument("--out", default=str(common.RESULTS / "sinkgd_warm_start_cpu"))
  args = p.parse_args(argv)
  names = [n.strip() for n in args.variants.split(",") if n.strip()]
  bad = [n for n in names if n not in VARIANTS]
  if bad or not names:
    p.error(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
  if args.steps < 12:
    p.error("--steps must be at least 12")
  result = {
    "metadata": {
      "steps": args.steps,
      "seed": args.seed,
      "machine": f"{jax.devices()[0].platform}, {platform.processor() or platform.machine()}",
      "jax": jax.__version__,
      "date": datetime.datetime.now(datetime.UTC).isoformat(),
      "command": " ".join(
        ["python benchmarks/sinkgd_warm_start.py"]
        + (argv if argv is not None else sys.argv[1:])
      ),
    },
    "variants": {},
  }
  for name in names:
    result["variants"][name] = run_variant(name, args.steps, args.seed)
    v = result["variants"][name]
    print(
      f"{name}: median residual {v['median_mean_residual_from_step_10']:.2e}, "
      f"loss {v['final_train_loss_last_10']:.3f}",
      flush=True,
    )
  common.write_outputs(
    Path(args.out), "sinkgd_warm_start", result, markdown(result)
  )
  return result


if __name__ == "__main__":
  common.run_as_script(main)
