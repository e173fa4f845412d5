"""Shared by the benchmark tests: a made-up sweep run, shaped like the records
`benchmarks.sweep.Runner` stores."""


def made_up_run(
  lr, adam_lr, loss, *, variant="sinkgd", seed=0, corpus="a", curve=()
):
  return {
    "variant": variant,
    "lr": lr,
    "adam_lr": adam_lr,
    "seed": seed,
    "corpus": corpus,
    "status": "ok",
    "final_val_loss": loss,
    "curve": list(curve),
  }
