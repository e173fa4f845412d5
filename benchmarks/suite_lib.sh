# What benchmarks/gpu_suite.sh and benchmarks/gpu_suite_later.sh share,
# sourced by them with their arguments after they set SUITE_NAME (the
# script's name) and SUITE_TOTAL_DEFAULT (its clock, seconds): the argument
# parsing, the GPU checks (or the dry run's stand-ins), the memory settings,
# `part` (one part under its timeout, its status recorded) and `finish` (the
# summary and the three-file bundle). See gpu_suite.sh's header for the rules.
# shellcheck shell=bash
set -u -o pipefail

die() { echo "$SUITE_NAME: $*" >&2; exit 2; }

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
[ $# -le 1 ] || die "usage: benchmarks/$SUITE_NAME [--dry-run] [OUT_DIR]"
OUT_DIR=${1:-${OUT:-}}
[ -n "$OUT_DIR" ] || die "usage: benchmarks/$SUITE_NAME [--dry-run] [OUT_DIR] (or set OUT)"
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TOTAL=${SUITE_TOTAL_S:-$SUITE_TOTAL_DEFAULT}
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
WORK=$(mktemp -d "${TMPDIR:-/tmp}/${SUITE_NAME%.sh}.XXXXXX") || die "no temp folder"
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

finish_suite() {  # the bundle, then 0 only when every part exited 0
  finish
  trap - TERM INT
  [ $ALL_OK -eq 1 ]
}
