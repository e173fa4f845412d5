#!/usr/bin/env bash
# One GPU lease, every accelerator measurement this project still owes (<= 9 min on
# one H100). Usage: benchmarks/gpu_suite.sh OUT_DIR
#
#   1. step cost on the 1b tree: adamw, sinkgd L=1 and L=5 (fused), the reference
#      SR-Sinkhorn, muon, swan; float32 and bfloat16 gradients   (budget 200 s)
#   2. end-to-end train-step throughput per optimizer on 130m, if
#      benchmarks/throughput.py exists on this checkout           (budget 120 s)
#   3. a short 60m convergence, one seed, at lrs chosen from the CPU sweeps
#      (docs/BENCHMARKS.md): two-group AdamW, sinkgd, swan, muon   (budget 180 s)
#
# Each part runs under its own `timeout`, so the suite ends in time even when one
# part hangs; a part that fails or times out is recorded and the next one runs.
# Writes OUT_DIR/<part>/ (each script's own markdown + JSON), OUT_DIR/suite.md
# (the tables, ready to paste) and OUT_DIR/suite.json (device, versions, and each
# part's status and seconds). Refuses, in one line and before any work, when no
# GPU is visible.
set -u -o pipefail

die() { echo "gpu_suite.sh: $*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: benchmarks/gpu_suite.sh OUT_DIR"
OUT=$1
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}

command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
  || die "no GPU: nvidia-smi finds none on this machine (nothing was run)"
"$PY" -c 'import jax, sys; sys.exit(0 if jax.devices()[0].platform == "gpu" else 1)' \
  2>/dev/null \
  || die "no GPU visible to JAX (install jax[cuda12]; nothing was run)"

mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"
STATUS="$OUT/status.tsv"
: > "$STATUS"

part() {  # part NAME SECONDS COMMAND...: run under a timeout, record status
  local name=$1 budget=$2 start rc
  shift 2
  echo "== $name (budget ${budget}s): $*"
  start=$(date +%s)
  timeout --signal=INT --kill-after=15 "$budget" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$*" \
    >> "$STATUS"
  echo "   exit $rc after $(( $(date +%s) - start ))s (log: $OUT/$name.log)"
}

part step_cost 200 "$PY" benchmarks/step_cost.py --models 1b \
  --grad-dtypes float32,bfloat16 \
  --optimizers adamw,sinkgd_l1,sinkgd_l5,sinkgd_l5_reference,muon,swan \
  --repeats 10 --max-seconds 5 --out "$OUT/step_cost"

if [ -f benchmarks/throughput.py ]; then
  # GUARDED: written by the scaling issue; flags as that script documents them.
  part throughput 120 "$PY" benchmarks/throughput.py --model 130m \
    --optimizers adamw,sinkgd,swan,muon --out "$OUT/throughput"
else
  printf 'throughput\tskipped\t0\tbenchmarks/throughput.py is not on this checkout\n' \
    >> "$STATUS"
  echo "== throughput: SKIPPED (benchmarks/throughput.py is not on this checkout)"
fi

# 600 steps of 32 x 256 byte tokens = 4.9M tokens: the stdlib corpus (31M) does
# not repeat. lrs: the best points at d_model 512 (60m's width) of the CPU width
# sweep, AdamW groups at their tiny-model tuned values (docs/BENCHMARKS.md); one
# point each, so each optimizer trains once.
part convergence_60m 180 "$PY" benchmarks/convergence.py --model 60m \
  --optimizers adamw2,sinkgd,swan,muon --seeds 0 --corpora stdlib \
  --max-extend 0 --steps 600 --batch-size 32 --seq-len 256 \
  --eval-every 50 --eval-batches 8 \
  --lrs-adamw2 3e-4 --adam-lrs-adamw2 3e-2 \
  --lrs-sinkgd 3e-3 --adam-lrs-sinkgd 3e-2 \
  --lrs-swan 1e-2 --adam-lrs-swan 3e-2 \
  --lrs-muon 0.02 --adam-lrs-muon 0.09 --out "$OUT/convergence_60m"

"$PY" - "$OUT" <<'EOF'
import json, subprocess, sys
from pathlib import Path

import flax, jax, jaxlib, optax

out = Path(sys.argv[1])
parts = []
for line in (out / "status.tsv").read_text().splitlines():
  name, rc, seconds, command = line.split("\t", 3)
  parts.append({"part": name, "exit": rc, "seconds": int(seconds),
                "command": command})
smi = subprocess.run(
  ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
   "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
device = jax.devices()[0]
meta = {"device_kind": device.device_kind, "device_count": jax.device_count(),
        "nvidia_smi": smi, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "flax": flax.__version__, "optax": optax.__version__, "parts": parts}
(out / "suite.json").write_text(json.dumps(meta, indent=1))
lines = [f"GPU suite on {smi} (jax {jax.__version__}, flax {flax.__version__}, "
         f"optax {optax.__version__})", "", "| part | exit | seconds |",
         "|---|---|---|"]
lines += [f"| {p['part']} | {p['exit']} | {p['seconds']} |" for p in parts]
for name, table in (("step_cost", "step_cost.md"),
                    ("throughput", "throughput.md"),
                    ("convergence_60m", "convergence.md")):
  path = out / name / table
  if path.exists():
    lines += ["", f"## {name}", "", path.read_text()]
(out / "suite.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[:4 + len(parts)]))
EOF
echo "wrote $OUT/suite.md and $OUT/suite.json"
