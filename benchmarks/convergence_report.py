"""Convergence's summary and report: per corpus and variant, the final loss
and steps to the best AdamW's final loss over seeds, verdicts, tables and
plots.

With one seed there is no spread: a mean is printed alone ("1 seed") and no
verdict of "tie", "lower" or "faster" is drawn from it.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from benchmarks import common, variants
from benchmarks.sweep import final_loss

ADAMW_KINDS = ("adamw", "adamw2")


def first_reaching(curve: list[dict], target: float) -> dict | None:
  """The first evaluation with val_loss <= target, or None."""
  return next(
    (e for e in curve if e["step"] > 0 and e["val_loss"] <= target), None
  )


ONE_SEED = "1 seed, no spread"


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (nan for a single value: one seed
  measures no spread, and a spread of 0 would read as an exact result)."""
  if not values:
    return math.nan, math.nan
  std = statistics.stdev(values) if len(values) > 1 else math.nan
  return statistics.fmean(values), std


def loss_verdict(diffs: list[float]) -> str:
  """From per-seed differences d = loss - reference loss (paired: a seed fixes
  init, data order and validation files for both): "tie" when |mean d| <= std d,
  else "lower" or "higher"."""
  mean, std = mean_std(diffs)
  if not math.isfinite(mean):
    return "n/a"
  if not math.isfinite(std):
    return ONE_SEED
  if abs(mean) <= std:
    return "tie"
  return "lower" if mean < 0 else "higher"


def speedup_verdict(mean: float, std: float) -> str:
  """ "tie" when mean - std <= 1 <= mean + std, else "faster" or "slower"."""
  if not math.isfinite(mean):
    return "n/a"
  if not math.isfinite(std):
    return ONE_SEED
  if mean - std <= 1.0 <= mean + std:
    return "tie"
  return "faster" if mean > 1 else "slower"


def summarize(final: dict, corpora: list[str], seeds: list[int]) -> dict:
  """Per corpus: one row per variant with mean/std of final loss, steps to the best
  AdamW's final loss, speedup and verdicts. `final[variant][(corpus, seed)]` = run."""
  out = {}
  for corpus in corpora:
    rows = {}
    for variant, by_key in final.items():
      losses = [
        final_loss(by_key[(corpus, s)]) for s in seeds if (corpus, s) in by_key
      ]
      if losses:
        rows[variant] = {"losses": losses, "loss": mean_std(losses)}
    kinds = [k for k in ADAMW_KINDS if k in rows]
    ref = min(kinds, key=lambda k: rows[k]["loss"][0]) if kinds else None
    for variant, row in rows.items():
      row["steps"], row["speedups"], row["diffs"] = [], [], []
      if ref is None:
        continue
      for s in seeds:
        mine = final[variant].get((corpus, s))
        theirs = final[ref].get((corpus, s))
        if mine is None or theirs is None:
          continue
        target = final_loss(theirs)
        row["diffs"].append(final_loss(mine) - target)
        hit = first_reaching(mine["curve"], target)
        ref_hit = first_reaching(theirs["curve"], target)
        row["steps"].append(hit["step"] if hit else None)
        if hit and ref_hit:
          row["speedups"].append(ref_hit["step"] / hit["step"])
      reached = [x for x in row["steps"] if x is not None]
      row["reached"] = f"{len(reached)}/{len(row['steps'])}"
      row["steps_ms"] = mean_std(reached)
      complete = row["steps"] and len(reached) == len(row["steps"])
      row["speedup"] = (
        mean_std(row["speedups"]) if complete else (math.nan, math.nan)
      )
      row["diff"] = mean_std(row["diffs"])
      row["loss_verdict"] = loss_verdict(row["diffs"])
      row["speedup_verdict"] = (
        speedup_verdict(*row["speedup"]) if complete else "not reached"
      )
    if rows:
      out[corpus] = {"reference": ref, "rows": rows}
  return out


# ------------------------------------------------------------------ reporting


def format_lr(x) -> str:
  return "—" if x is None else f"{x:.3g}"


def _pm(ms, fmt=".4f") -> str:
  mean, std = ms
  if not math.isfinite(mean):
    return "n/a"
  if not math.isfinite(std):
    return f"{mean:{fmt}}"
  return f"{mean:{fmt}} ± {std:{fmt.lstrip('+')}}"


def _point(variant: str, lr, adam_lr, alpha: float) -> str:
  v = variants.VARIANTS[variant]
  text = f"lr {format_lr(lr)}"
  if v.optimizer in ("sinkgd", "swan", "sinkgd_stateless"):
    rule = v.overrides.get("update_scale", "rms")
    scale = "" if rule == "rms" else f" x {rule} s(m, n)"
    text += f" (matrices {alpha * lr:.2g}{scale})"
  if adam_lr is not None:
    text += f", adam_lr {format_lr(adam_lr)}"
  return text


def markdown(result: dict) -> str:
  meta, s = result["metadata"], result["settings"]
  lines = [
    f"Convergence on {meta['device_kind']} ({meta['platform']}, "
    f"{meta['cpu_count']} CPU cores), {meta['date']}; jax {meta['jax']}, "
    f"flax {meta['flax']}, optax {meta['optax']}.",
    "",
    f"Command: `{meta['command']}`",
    "",
    f"Model `{s['model']}` ({(s['params'] or 0) / 1e6:.2f}M params), "
    f"{s['steps']} steps of {s['batch_size']} x {s['seq_len']} tokens "
    f"({s['steps'] * s['batch_size'] * s['seq_len'] / 1e3:.1f}k tokens), byte "
    f"tokens, warmup 10% then cosine to 10% of the peak lr, gradient clip "
    f"{s['grad_clip']:g}; validation every {s['eval_every']} steps on "
    f"{s['eval_batches']} batches. sinkgd/swan: matrices step alpha x lr, alpha "
    f"{s['alpha']:g}; sinkgd 5 SR-Sinkhorn rounds (fused), swan's default "
    "whitening (4 quintic steps, `fast`). Tuned on seed "
    f"{s['tune_seed']} of {s['corpora'][0]}; seeds {s['seeds']}; corpora "
    f"{', '.join(s['corpora'])}.",
    "",
    "### Tuning (final validation loss; best in bold)",
    "",
  ]
  for variant, t in result["tuning"].items():
    runs = t["runs"]
    lrs = sorted({r["lr"] for r in runs})
    adam_lrs = sorted({r["adam_lr"] for r in runs if r["adam_lr"] is not None})
    best = t["best"]
    flag = f" — best on an edge ({', '.join(t['edges'])})" if t["edges"] else ""
    lines.append(
      f"**{variant}**: best {_point(variant, best['lr'], best['adam_lr'], s['alpha'])}"
      f"{flag}"
    )
    lines.append("")
    cols = adam_lrs or [None]
    head = "adam_lr →" if adam_lrs else ""
    lines.append(
      f"| lr {head} | "
      + " | ".join(format_lr(c) if c else "" for c in cols)
      + " |"
    )
    lines.append("|---|" + "---|" * len(cols))
    for lr in lrs:
      cells = []
      for c in cols:
        match = [r for r in runs if r["lr"] == lr and r["adam_lr"] == c]
        if not match:
          cells.append("")
          continue
        loss = final_loss(match[0])
        text = f"{loss:.4f}" if math.isfinite(loss) else match[0]["status"]
        cells.append(f"**{text}**" if match[0] is best else text)
      lines.append(f"| {format_lr(lr)} | " + " | ".join(cells) + " |")
    lines.append("")
  n = len(s["seeds"])
  spread = f"{n} seeds (mean ± std)" if n > 1 else "1 seed (no spread)"
  for corpus, summary in result["summary"].items():
    ref = summary["reference"]
    lines += [
      f"### {corpus}: each optimizer at its tuned point, {spread}",
      "",
      f"Reference: the best AdamW on this corpus, **{ref}**. Target of a seed: "
      f"{ref}'s final validation loss on that seed.",
      "",
      "| optimizer | point | final val loss | minus best AdamW's, per seed "
      "| steps to target "
      "(reached) | speedup vs best AdamW | optimizer state |",
      "|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary["rows"].items():
      point = result["points"][variant]
      speed = row.get("speedup", (math.nan, math.nan))
      speed_text = (
        f"{_pm(speed, '.2f')}x ({row['speedup_verdict']})"
        if math.isfinite(speed[0])
        else row.get("speedup_verdict", "n/a")
      )
      lines.append(
        f"| {variant} | {_point(variant, point['lr'], point['adam_lr'], s['alpha'])} | "
        f"{_pm(row['loss'])} (n={len(row['losses'])}) | "
        f"{_pm(row.get('diff', (math.nan, 0)), '+.4f')} "
        f"({row.get('loss_verdict', 'n/a')}) | "
        f"{_pm(row.get('steps_ms', (math.nan, 0)), '.0f')} "
        f"({row.get('reached', 'n/a')}) | {speed_text} | "
        f"{point['state_bytes'] / 2**20:.2f} MiB |"
      )
    lines.append("")
  loads = [r["load_average_after"][0] for r in result["all_runs"]]
  if loads:
    lines.append(
      f"Steps are read off the evaluations (every {s['eval_every']} steps). "
      "A seed changes the validation files too, so losses are compared per "
      "seed (paired): the difference to the best AdamW's final loss on the same "
      'seed, mean ± std over seeds, is a "tie" when |mean| <= std; a speedup is '
      'a "tie" when 1 is within mean ± std. Machine load '
      f"(1-minute load average after each run): {min(loads):.1f} to "
      f"{max(loads):.1f} on {meta['cpu_count']} cores; times are not compared."
    )
  missing = meta.get("runs_missing") or []
  if missing:
    lines += [
      "",
      f"Not run (--cached-only; not in this report): {len(missing)} runs: "
      + "; ".join(
        f"{v} {_point(v, lr, alr, s['alpha'])} seed {seed} {corpus}"
        for v, lr, alr, seed, corpus in missing
      )
      + ".",
    ]
  lines += [
    "",
    "![validation loss vs step](val_loss_vs_step.png) "
    "![lr sweep](lr_sweep.png)",
  ]
  return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
  s = result["settings"]
  corpora = list(result["summary"])
  fig, axes = common.panels(len(corpora), 6.5, 4.5)
  for ax, corpus in zip(axes[0], corpora):
    lows, highs = [], []
    for variant in result["summary"][corpus]["rows"]:
      curves = [
        r["curve"]
        for r in result["final_runs"]
        if r["variant"] == variant
        and r["corpus"] == corpus
        and final_loss(r) < math.inf
      ]
      if not curves:
        continue
      steps = [e["step"] for e in curves[0]]
      values = np.array([[e["val_loss"] for e in c] for c in curves])
      mean, std = (
        values.mean(0),
        values.std(0, ddof=1 if len(values) > 1 else 0),
      )
      (line,) = ax.plot(steps, mean, label=f"{variant} ({len(curves)} seeds)")
      ax.fill_between(
        steps, mean - std, mean + std, color=line.get_color(), alpha=0.2
      )
      lows.append(mean.min())
      highs.append(mean[len(mean) // 3])
    if lows:
      ax.set_ylim(min(lows) - 0.05, max(highs) + 0.05)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(
      f"{corpus}: {s['model']}, {s['steps']} steps of {s['batch_size']}x"
      f"{s['seq_len']} (mean ± std)",
      fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  common.save_figure(fig, out / "val_loss_vs_step.png")

  tuned = list(result["tuning"])
  if not tuned:
    return
  fig, axes = common.panels(len(tuned), 3.6, 3.4)
  for ax, variant in zip(axes[0], tuned):
    runs = result["tuning"][variant]["runs"]
    for alr in sorted(
      {r["adam_lr"] for r in runs}, key=lambda x: (x is not None, x)
    ):
      line = sorted(
        (r for r in runs if r["adam_lr"] == alr and final_loss(r) < math.inf),
        key=lambda r: r["lr"],
      )
      ax.plot(
        [r["lr"] for r in line],
        [r["final_val_loss"] for r in line],
        marker="o",
        label="one lr" if alr is None else f"adam_lr {alr:g}",
      )
    common.lr_axes(ax, variant, "lr (matrices: alpha x lr for sinkgd/swan)")
  axes[0][0].set_ylabel("final validation loss")
  common.save_figure(fig, out / "lr_sweep.png")
