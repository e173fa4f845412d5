#!/usr/bin/env bash
# One GPU lease, the accelerator measurements this project owes, in one
# shot: under 8 minutes of wall time on one H200 (docs/SCALING.md has the
# budget and how it was estimated). Nothing is installed: it runs from a
# checkout with PYTHONPATH (set here) and the image's python3.
#
#   benchmarks/gpu_suite.sh [--dry-run] [OUT_DIR]    (OUT_DIR default: $OUT)
#
# Parts, in order of value, each under its own `timeout` (limit in s):
#   1. attention        train.py's 60m step with cuDNN flash attention
#                       (auto, cudnn) and XLA's, compiled and run       45
#   2. step_cost        the optimizer step on the 1b tree, bf16 grads:
#                       adamw, sinkgd_fast, sinkgd L=5, swan, muon (no
#                       pass counting)                                  170
#   3. throughput_60m   train step, 64 x 256 tokens, scanned layers,
#                       adamw/sinkgd/swan/muon, MFU                     50
#   4. throughput_130m  the same on 130m                                50
#   5. convergence      60m, one seed, 300 steps of 32 x 256, in
#                       process: two-group AdamW, sinkgd, swan, muon    90
# A part's limit is also cut to what is left of the suite's (SUITE_TOTAL_S,
# 430 s, the summary and bundle included). Every part writes one record per finished case, flushed, so a part
# killed at its limit ("cut") keeps what it finished; the next part runs.
#
# Everything is written under a temporary folder and packed into three files
# in OUT_DIR: suite.tgz (every part's records, tables and log), suite.md
# (the tables) and suite.json (device, versions, XLA flags, memory settings,
# the attention that ran, per-part exit, seconds, limit, cut). Exit 0 when
# every part exited 0, 1 otherwise.
#
# --dry-run: the same script and parts at tiny sizes on the CPU (JAX_PLATFORMS
# =cpu, no GPU check, a stand-in for the device query): CI runs it from a
# checkout with the project not installed. Refuses, in one line and before
# any work, when no GPU is visible (without --dry-run).
# SUITE_PARTS (names, comma-separated) runs only those parts; SUITE_LIMITS
# (name=seconds,...) overrides their limits.
SUITE_NAME=gpu_suite.sh
SUITE_TOTAL_DEFAULT=430
# shellcheck source=benchmarks/suite_lib.sh
source "$(dirname "$0")/suite_lib.sh" "$@"

if [ $DRY -eq 1 ]; then
  STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  part attention 45 attention_smoke --model tiny --impls auto,cudnn,xla \
    --scan-layers \
    --batch-size 2 --seq-len 32 --steps 2
  part step_cost 170 step_cost --models tiny --grad-dtypes bfloat16 \
    --optimizers adamw,sinkgd_l5 --no-count-passes --repeats 2 --warmup 1
  part throughput_60m 50 throughput --model tiny --batch-size 4 --seq-len 32 \
    --scan-layers --optimizers adamw,sinkgd --warmup 1 --windows 2 --steps 1
  part throughput_130m 50 throughput --model tiny --batch-size 4 --seq-len 32 \
    --scan-layers --optimizers adamw --warmup 1 --windows 2 --steps 1
  part convergence 90 convergence --in-process --model tiny \
    --optimizers adamw2,sinkgd --seeds 0 --corpora "$STDLIB/json" \
    --max-extend 0 --steps 4 --batch-size 4 --seq-len 32 --eval-every 2 \
    --eval-batches 1 --lrs-adamw2 3e-3 --adam-lrs-adamw2 3e-2 \
    --lrs-sinkgd 3e-2 --adam-lrs-sinkgd 3e-2
else
  part attention 45 attention_smoke --model 60m --impls auto,cudnn,xla \
    --batch-size 8 --seq-len 256 --dtype bfloat16 --scan-layers --steps 3
  part step_cost 170 step_cost --models 1b --grad-dtypes bfloat16 \
    --optimizers adamw,sinkgd_fast,sinkgd_l5,swan,muon --no-count-passes \
    --repeats 10 --warmup 2 --max-seconds 2
  part throughput_60m 50 throughput --model 60m --batch-size 64 --seq-len 256 \
    --scan-layers --optimizers adamw,sinkgd,swan,muon --warmup 2 --windows 3 \
    --steps 5
  part throughput_130m 50 throughput --model 130m --batch-size 64 \
    --seq-len 256 --scan-layers --optimizers adamw,sinkgd,swan,muon \
    --warmup 2 --windows 3 --steps 5
  # 300 steps of 32 x 256 byte tokens = 2.5M tokens: the stdlib corpus (31M)
  # does not repeat. lrs: the best points at d_model 512 (60m's width) of the
  # CPU width sweep, AdamW groups at their tiny-model tuned values
  # (docs/BENCHMARKS.md); one point each, so each optimizer trains once.
  part convergence 90 convergence --in-process --model 60m \
    --optimizers adamw2,sinkgd,swan,muon --seeds 0 --corpora stdlib \
    --max-extend 0 --steps 300 --batch-size 32 --seq-len 256 --scan-layers \
    --eval-every 50 --eval-batches 8 \
    --lrs-adamw2 3e-4 --adam-lrs-adamw2 3e-2 \
    --lrs-sinkgd 3e-3 --adam-lrs-sinkgd 3e-2 \
    --lrs-swan 1e-2 --adam-lrs-swan 3e-2 \
    --lrs-muon 0.02 --adam-lrs-muon 0.09
fi

finish_suite
