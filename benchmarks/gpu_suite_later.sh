#!/usr/bin/env bash
# A later GPU lease, optional: what the first suite (gpu_suite.sh) leaves
# out, each part under 9 minutes, the whole under 9 minutes (one command).
# Same rules as gpu_suite.sh (nothing installed, results recorded as they
# finish, a cut part keeps them, three files back, --dry-run on the CPU).
#
#   benchmarks/gpu_suite_later.sh [--dry-run] [OUT_DIR]   (default: $OUT)
#
# Parts (limit in s):
#   1. capacity        train.py's step compiled for the GPU itself, 350m
#                      and 1b, scanned, 4 optimizers; the device's
#                      memory_stats (its real allocator limit) recorded  240
#   2. throughput_350m 350m, 64 x 256 tokens, bf16, scanned, MFU          120
#   3. swan_precision  SWAN's whitening against float64 at jax's default
#                      matmul precision (TF32 on Hopper) and at highest  150
# SUITE_PARTS=name runs one part alone (a lease of its own, if need be).
set -u -o pipefail
SUITE_NAME=gpu_suite_later.sh
SUITE_TOTAL_DEFAULT=540
# shellcheck source=benchmarks/suite_lib.sh
source "$(dirname "$0")/suite_lib.sh" "$@"

if [ $DRY -eq 1 ]; then
  part capacity 240 capacity --models tiny --optimizers adamw,sinkgd \
    --scan-layers --seq-len 32
  part throughput_350m 120 throughput --model tiny --batch-size 4 \
    --seq-len 32 --scan-layers --optimizers adamw --warmup 1 --windows 2 \
    --steps 1
  part swan_precision 150 swan_whitening accuracy --modes fast \
    --precisions default,highest --shape 32,64
else
  part capacity 240 capacity --models 350m,1b \
    --optimizers adamw,sinkgd,swan,muon --scan-layers --seq-len 256 \
    --dtype bfloat16 --memory-gib 139
  part throughput_350m 120 throughput --model 350m --batch-size 64 \
    --seq-len 256 --dtype bfloat16 --scan-layers \
    --optimizers adamw,sinkgd,swan,muon --warmup 2 --windows 3 --steps 5
  part swan_precision 150 swan_whitening accuracy \
    --modes fast,exact,newton_schulz --precisions default,highest
fi

finish_suite
