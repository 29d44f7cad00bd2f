#!/usr/bin/env bash
# GPU check for pathalign: about 6-8 minutes on one GPU. Each step runs under its own time limit,
# a failing step is recorded and the next one runs; the summary is printed at the end and written
# to OUT/summary.md (copy its table into benchmarks/RESULTS.md with the machine and date).
#
#   1. CUDA-gated tests (PATHALIGN_GPU_TESTS=1): attention backends vs dense, patch-encoder
#      extraction in the entry's precision vs CPU fp32, embed --device cuda vs cpu.
#   2. Slide encoder (exaone-path-2.5 preset, bf16, 64 fragments) at 16k / 50k / 100k tokens:
#      pathalign's default path vs the dense-mask published approach; time, peak memory, OOMs.
#   3. Extraction --device cuda (pathalign reading + a ViT-B/14 in bf16).
#   4. A short bf16 training run --device cuda (the trainer autocasts to bf16 on CUDA).
#   5. With more than one GPU: a 2-process NCCL training run (torchrun) on a small synthetic cohort.
#
# Usage: benchmarks/gpu_check.sh [--out DIR] [--python PY] [--only STEPS] [--dry-run] [--help]
#   --out DIR    logs, JSON and summary.md (default ${TMPDIR:-/tmp}/pathalign-gpu-check)
#   --only 1,3   run only these steps;  --dry-run  print the plan (the commands), run nothing.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${TMPDIR:-/tmp}/pathalign-gpu-check"
PY="${PYTHON:-python}"
ONLY="1,2,3,4,5"
DRY=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --only) ONLY="${2:?--only needs step numbers, e.g. 1,3}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case ",$ONLY," in *[!0-9,]*) echo "gpu_check.sh: --only takes step numbers 1-5, e.g. 1,3" >&2; exit 2 ;; esac

cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export OUT PY
[ "$DRY" -eq 1 ] || mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"

NGPU=0
if [ "$DRY" -eq 0 ]; then
  NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
  if [ "$NGPU" -lt 1 ]; then
    echo "gpu_check.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
    exit 3
  fi
  {
    echo "# pathalign GPU check — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", platform.node(), platform.machine())'
    echo '```'
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
  } > "$SUMMARY"
fi

wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# step NUMBER NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome
step() {
  local num="$1" name="$2" limit="$3"; shift 3
  wants "$num" || return 0
  if [ "$DRY" -eq 1 ]; then
    printf '[%s] %s (limit %ss): %s\n' "$num" "$name" "$limit" "$*"
    return 0
  fi
  echo "== [$num] $name (limit ${limit}s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  local status="ok"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="timed out after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$status" = "ok" ] && status="failed (exit $rc)"
  echo "| $num $name | $status | $((SECONDS - t0)) |" >> "$SUMMARY"
}

# 1. CUDA-gated tests
step 1 cuda-tests 120 env PATHALIGN_GPU_TESTS=1 "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/test_slide_encoder.py tests/test_patch_encoders.py tests/test_device_option.py -k cuda

# 2. slide encoder: default path vs dense mask (the published approach) at 16k/50k/100k tokens
step 2 slide-encoder 200 "$PY" benchmarks/slide_encoder.py --device cuda --preset exaone-path-2.5 --dtype bf16 \
  --tokens 16384,50000,100000 --fragments 64 --modes fwd --parts encoder --backends auto,dense \
  --repeats 3 --seconds 15 --max-dense-gib 100000 --json "$OUT/slide_encoder.json"

# 3. extraction on the GPU
step 3 extract-cuda 90 "$PY" benchmarks/extract.py --device cuda --size 8000 --patches 1000 --repeats 1 \
  --batch-size 128

# 4. short bf16 training run on the GPU
step 4 train-bf16 90 "$PY" benchmarks/train.py --device cuda --preset exaone-path-2.5 --patients 64 \
  --batch-size 32 --tokens 4096 --feature-dim 768 --steps 20 --workers 2

# 5. 2-process NCCL training (needs two GPUs); NCCL_CHECK_DEVICE=cpu runs the same commands with gloo
nccl() {
  local dev="${NCCL_CHECK_DEVICE:-cuda}"
  local d="$OUT/nccl"
  rm -rf "$d" && mkdir -p "$d" || return 1
  "$PY" -m pathalign synth --out "$d/synth" --patients 48 --slide-size 1024 --genes 200 --seed 0 &&
  "$PY" -m pathalign preprocess "$d/synth/slides" --out "$d/prep" --patch-size 64 --device "$dev" --quiet &&
  "$PY" -m pathalign cohort build --out "$d/cohort" --clinical "$d/synth/clinical.tsv" --slides "$d/synth/slides.tsv" \
    --features "$d/prep/features_pathalign-stats" --rna "$d/synth/rna_tpm.tsv.gz" --maf "$d/synth/mutations.maf" &&
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m pathalign train --cohort "$d/cohort" \
    --out "$d/run" --preset tiny --steps 20 --batch-size 16 --device "$dev" --quiet
}
export -f nccl
if [ "$DRY" -eq 1 ] || [ "$NGPU" -gt 1 ]; then
  step 5 nccl-2proc 180 bash -c nccl
elif wants 5; then
  echo "| 5 nccl-2proc | skipped: $NGPU GPU (needs 2) | 0 |" >> "$SUMMARY"
fi

if [ "$DRY" -eq 0 ]; then
  if [ -f "$OUT/slide_encoder.json" ]; then
    "$PY" - "$OUT/slide_encoder.json" >> "$SUMMARY" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
print("\n| tokens | path | seconds (median) | peak MiB | outcome |\n|---|---|---|---|---|")
for r in rows:
    err = " ".join(r.get("error", []) or [])
    outcome = "out of memory" if "OutOfMemory" in err or "out of memory" in err else (err[:80] or "ok")
    secs = f"{r['seconds']:.3f}" if "seconds" in r else "—"
    peak = f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "—"
    print(f"| {r['tokens']} | {'default' if r['backend'] == 'auto' else r['backend']} | {secs} | {peak} | {outcome} |")
EOF
  fi
  echo
  cat "$SUMMARY"
fi
