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
#                       pass counting)                                  160
#   3. throughput_60m   train step, 64 x 256 tokens, scanned layers,
#                       adamw/sinkgd/swan/muon, MFU                     50
#   4. throughput_130m  the same on 130m                                50
#   5. convergence      60m, one seed, 300 steps of 32 x 256, in
#                       process: two-group AdamW, sinkgd, swan, muon    100
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
set -u -o pipefail

die() { echo "gpu_suite.sh: $*" >&2; exit 2; }

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
[ $# -le 1 ] || die "usage: benchmarks/gpu_suite.sh [--dry-run] [OUT_DIR]"
OUT_DIR=${1:-${OUT:-}}
[ -n "$OUT_DIR" ] || die "usage: benchmarks/gpu_suite.sh [--dry-run] [OUT_DIR] (or set OUT)"
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TOTAL=${SUITE_TOTAL_S:-430}
REPORT_RESERVE=25  # seconds kept for the summary and the bundle

command -v "$PY" >/dev/null 2>&1 || die "no $PY on PATH (set PYTHON)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Device memory as stated in suite.json: allocate on demand (so peak bytes
# are what a run needs, not 75% of the device), up to 95% of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}

if [ $DRY -eq 1 ]; then
  export JAX_PLATFORMS=cpu
  device_query() { echo "dry run: $(uname -m) CPU ($(nproc) cores), stand-in for nvidia-smi"; }
else
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    || die "no GPU: nvidia-smi finds none on this machine (nothing was run)"
  check='import jax, sys
d = jax.devices()[0]
print(f"it sees {d.platform}: {d.device_kind}")
sys.exit(0 if d.platform == "gpu" else 3)'
  err=$(cd "$REPO" && "$PY" -c "$check" 2>&1) \
    || die "no GPU visible to JAX: $(printf '%s' "$err" | tail -n 1) (nothing was run)"
  device_query() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  }
fi

mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX") || die "no temp folder"
cd "$REPO"
STATUS="$WORK/status.tsv"
: > "$STATUS"
[ $DRY -eq 1 ] && : > "$WORK/DRY_RUN"
device_query > "$WORK/device.txt" 2>&1
START=$(date +%s)

wanted() {  # wanted NAME: in SUITE_PARTS, or every part when it is unset
  [ -z "${SUITE_PARTS:-}" ] || [[ ",$SUITE_PARTS," == *",$1,"* ]]
}

limit_of() {  # limit_of NAME DEFAULT: SUITE_LIMITS's value, or DEFAULT
  local pair
  for pair in ${SUITE_LIMITS:+${SUITE_LIMITS//,/ }}; do
    [ "${pair%%=*}" = "$1" ] && { echo "${pair#*=}"; return; }
  done
  echo "$2"
}

part() {  # part NAME LIMIT MODULE ARGS...: one part under its timeout
  local name=$1 limit module=$3 start rc left
  limit=$(limit_of "$name" "$2")
  shift 3
  wanted "$name" || return 0
  left=$(( TOTAL - REPORT_RESERVE - ($(date +%s) - START) ))
  if [ "$left" -lt 5 ]; then
    printf '%s\tskipped\t0\t0\t%s\t%s\n' "$name" "$module" "no time left" >> "$STATUS"
    echo "== $name: SKIPPED (no time left of the suite's ${TOTAL}s)"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (limit ${limit}s): $module $*"
  start=$(date +%s)
  # INT first: Python stops where it is (what was recorded stays); KILL
  # 10 s later if it is stuck in a compile.
  timeout --signal=INT --kill-after=10 "$limit" \
    "$PY" -m "benchmarks.$module" "$@" --out "$WORK/$name" \
    > "$WORK/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" \
    "$limit" "$module" "$PY -m benchmarks.$module $*" >> "$STATUS"
  echo "   exit $rc after $(( $(date +%s) - start ))s"
}

FINISHED=0
ALL_OK=1
finish() {  # the summary and the bundle, once, whatever happened before
  [ $FINISHED -eq 1 ] && return
  FINISHED=1
  cut -f2 "$STATUS" | grep -qv '^0$' && ALL_OK=0
  (cd "$REPO" && timeout 120 "$PY" -m benchmarks.gpu_suite_report "$WORK") \
    > "$WORK/report.log" 2>&1 || {
    { echo "# GPU suite: the summary failed (see report.log in suite.tgz)"
      echo; echo '```'; cat "$STATUS"; tail -n 20 "$WORK/report.log"; echo '```'
    } > "$WORK/suite.md"
    echo '{"report_failed": true}' > "$WORK/suite.json"
  }
  cat "$WORK/report.log"
  tar -czf "$OUT_DIR/suite.tgz" -C "$WORK" .
  cp "$WORK/suite.md" "$WORK/suite.json" "$OUT_DIR/"
  [ -n "${SUITE_KEEP_WORK:-}" ] || rm -rf "$WORK"
  echo "wrote $OUT_DIR/suite.tgz, suite.md and suite.json ($(( $(date +%s) - START ))s)"
}
trap 'finish; exit 143' TERM INT

if [ $DRY -eq 1 ]; then
  STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  part attention 45 attention_smoke --model tiny --impls auto,cudnn,xla \
    --scan-layers \
    --batch-size 2 --seq-len 32 --steps 2
  part step_cost 160 step_cost --models tiny --grad-dtypes bfloat16 \
    --optimizers adamw,sinkgd_l5 --no-count-passes --repeats 2 --warmup 1
  part throughput_60m 50 throughput --model tiny --batch-size 4 --seq-len 32 \
    --scan-layers --optimizers adamw,sinkgd --warmup 1 --windows 2 --steps 1
  part throughput_130m 50 throughput --model tiny --batch-size 4 --seq-len 32 \
    --scan-layers --optimizers adamw --warmup 1 --windows 2 --steps 1
  part convergence 100 convergence --in-process --model tiny \
    --optimizers adamw2,sinkgd --seeds 0 --corpora "$STDLIB/json" \
    --max-extend 0 --steps 4 --batch-size 4 --seq-len 32 --eval-every 2 \
    --eval-batches 1 --lrs-adamw2 3e-3 --adam-lrs-adamw2 3e-2 \
    --lrs-sinkgd 3e-2 --adam-lrs-sinkgd 3e-2
else
  part attention 45 attention_smoke --model 60m --impls auto,cudnn,xla \
    --batch-size 8 --seq-len 256 --dtype bfloat16 --scan-layers --steps 3
  part step_cost 160 step_cost --models 1b --grad-dtypes bfloat16 \
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
  part convergence 100 convergence --in-process --model 60m \
    --optimizers adamw2,sinkgd,swan,muon --seeds 0 --corpora stdlib \
    --max-extend 0 --steps 300 --batch-size 32 --seq-len 256 --scan-layers \
    --eval-every 50 --eval-batches 8 \
    --lrs-adamw2 3e-4 --adam-lrs-adamw2 3e-2 \
    --lrs-sinkgd 3e-3 --adam-lrs-sinkgd 3e-2 \
    --lrs-swan 1e-2 --adam-lrs-swan 3e-2 \
    --lrs-muon 0.02 --adam-lrs-muon 0.09
fi

finish
trap - TERM INT
# 0 only when every part exited 0.
[ $ALL_OK -eq 1 ]
