#!/usr/bin/env bash
# GPU check for pathalign: the one script to run when a GPU is available (under 8 minutes on one H200).
# Each stage runs under its own time limit; a failing or timed-out stage is recorded and the next one
# runs, and every measurement is written as soon as it exists, so the numbers a stage had are kept.
# Out: OUT/summary.json (stages + every measurement) and OUT/summary.md (tables for benchmarks/RESULTS.md).
#
#   1. CUDA-gated tests (PATHALIGN_GPU_TESTS=1): attention backends vs dense, patch encoders in their
#      precision vs CPU fp32, embed on cuda vs cpu, a training step under sync_debug_mode("error"),
#      RoPE tables on the GPU vs the CPU.
#   2. pathalign vs the published WSIEncoder (dense [B,T,T] mask, from a scratch checkout of
#      LG-AI-EXAONE/EXAONE-Path-2.5: --exaone-code) at 16k / 50k / 100k tokens, bf16, published config,
#      random weights: time, peak memory, who runs out of memory, outputs equal.
#   3. NoPE attention kernel at 16k / 50k / 100k tokens: TFLOP/s and share of the 989 TFLOP/s bf16 peak.
#   4. Patch-feature extraction patches/s, exaone-path-2.5 (ViT-B/14) and uni (ViT-L/16), the DataLoader
#      reading a real slide (shared/data/cmu_small_region.svs).
#   5. One bf16 training step on 4 slides of 50k tokens with activation checkpointing.
#   6. A short bf16 training run of the trainer on cuda (benchmarks/train.py).
#   7. With two GPUs or more: a 2-process NCCL training run (torchrun) on a small synthetic cohort.
#
# Usage: benchmarks/gpu_check.sh [--out DIR] [--python PY] [--exaone-code DIR] [--only STAGES] [--dry-run]
#   --out DIR          logs, JSON and summary (default ${TMPDIR:-/tmp}/pathalign-gpu-check)
#   --exaone-code DIR  checkout of LG-AI-EXAONE/EXAONE-Path-2.5 (default $EXAONE_PATH_CODE or ../EXAONE-Path-2.5)
#   --only 1,3         run only these stages;  --dry-run  print the plan (the commands), run nothing.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${TMPDIR:-/tmp}/pathalign-gpu-check"
PY="${PYTHON:-python}"
EXAONE_CODE="${EXAONE_PATH_CODE:-$ROOT/../EXAONE-Path-2.5}"
SHARED="${PATHALIGN_SHARED:-$ROOT/../shared}"
[ -d "$SHARED" ] || SHARED="$ROOT/shared"
ONLY="1,2,3,4,5,6,7"
DRY=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --exaone-code) EXAONE_CODE="${2:?--exaone-code needs a folder}"; shift 2 ;;
    --only) ONLY="${2:?--only needs stage numbers, e.g. 1,3}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case ",$ONLY," in *[!0-9,]*) echo "gpu_check.sh: --only takes stage numbers 1-7, e.g. 1,3" >&2; exit 2 ;; esac

cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export OUT PY PATHALIGN_SHARED="$SHARED"
STAGES="$OUT/stages.tsv"
STAGE_PY="benchmarks/gpu_stages.py"

NGPU=0
if [ "$DRY" -eq 0 ]; then
  mkdir -p "$OUT" && : > "$STAGES"
  NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
  if [ "$NGPU" -lt 1 ]; then
    echo "gpu_check.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
    exit 3
  fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", platform.node())'
  } > "$OUT/machine.txt"
fi

wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"; }

# stage NUMBER NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome
stage() {
  local num="$1" name="$2" limit="$3"; shift 3
  wants "$num" || return 0
  if [ "$DRY" -eq 1 ]; then
    printf '[%s] %s (limit %ss): %s\n' "$num" "$name" "$limit" "$*"
    return 0
  fi
  echo "== [$num] $name (limit ${limit}s)"
  local t0=$SECONDS rc status="ok"
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timed out after ${limit}s"
  elif [ "$rc" -ne 0 ]; then status="failed (exit $rc)"; fi
  record "$num" "$name" "$status" "$((SECONDS - t0))"
}

skip() {  # skip NUMBER NAME REASON
  wants "$1" || return 0
  if [ "$DRY" -eq 1 ]; then printf '[%s] %s: skipped (%s)\n' "$1" "$2" "$3"; else record "$1" "$2" "skipped: $3" 0; fi
}

stage 1 cuda-tests 150 env PATHALIGN_GPU_TESTS=1 "$PY" -m pytest -q -rs -p no:cacheprovider \
  tests/test_slide_encoder.py tests/test_patch_encoders.py tests/test_device_option.py tests/test_gpu_path.py -k cuda

if [ "$DRY" -eq 1 ] || [ -f "$EXAONE_CODE/slide_encoder_config.yaml" ]; then
  stage 2 official 120 "$PY" "$STAGE_PY" official --exaone-code "$EXAONE_CODE" --tokens 16384,50000,100000 \
    --dtype bf16 --json "$OUT/official.json"
else
  skip 2 official "no checkout of LG-AI-EXAONE/EXAONE-Path-2.5 at $EXAONE_CODE (--exaone-code)"
fi

stage 3 kernel 30 "$PY" "$STAGE_PY" kernel --tokens 16384,50000,100000 --json "$OUT/kernel.json"

SLIDE="$SHARED/data/cmu_small_region.svs"
if [ "$DRY" -eq 1 ] || [ -f "$SLIDE" ]; then
  stage 4 extract 75 "$PY" "$STAGE_PY" extract --slide "$SLIDE" --encoders exaone-path-2.5,uni --patches 2048 \
    --batch-size 256 --workers 8 --json "$OUT/extract.json"
else
  skip 4 extract "no real slide at $SLIDE (set PATHALIGN_SHARED)"
fi

stage 5 train-step 60 "$PY" "$STAGE_PY" train-step --tokens 50000 --slides 4 --json "$OUT/train_step.json"

stage 6 train-bf16 45 "$PY" benchmarks/train.py --device cuda --preset exaone-path-2.5 --patients 64 \
  --batch-size 32 --tokens 4096 --feature-dim 768 --steps 20 --workers 2

# 7. 2-process NCCL training (needs two GPUs); NCCL_CHECK_DEVICE=cpu runs the same commands with gloo
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
  stage 7 nccl-2proc 120 bash -c nccl
else
  skip 7 nccl-2proc "$NGPU GPU (needs 2)"
fi

[ "$DRY" -eq 1 ] && exit 0
"$PY" - "$OUT" <<'EOF_PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
stages = [dict(zip(("stage", "name", "status", "seconds"), l.split("\t"))) for l in
          (out / "stages.tsv").read_text().splitlines() if l.strip()]
results = {}
for f in ("official", "kernel", "extract", "train_step"):
    p = out / f"{f}.json"
    if p.is_file():
        results[f] = json.loads(p.read_text())
summary = {"machine": (out / "machine.txt").read_text().strip(), "stages": stages, "results": results}
(out / "summary.json").write_text(json.dumps(summary, indent=1))

def rows(name):
    return results.get(name, {}).get("rows", [])

def num(x, fmt):
    return format(x, fmt) if isinstance(x, (int, float)) else "—"

md = ["# pathalign GPU check", "", "```", summary["machine"], "```", "", "| stage | status | seconds |", "|---|---|---|"]
md += [f"| {s['stage']} {s['name']} | {s['status']} | {s['seconds']} |" for s in stages]
if rows("official"):
    md += ["", "| tokens | implementation | seconds | peak MiB | outcome |", "|---|---|---|---|---|"]
    for r in rows("official"):
        if "rel_err" in r:
            md.append(f"| {r['tokens']} | outputs equal? | — | — | rel. error {r['rel_err']:.1e} "
                      f"({'equal' if r['equal'] else 'NOT equal'} at {r['tolerance']:g}) |")
        else:
            md.append(f"| {r['tokens']} | {r['impl']} | {num(r.get('seconds'), '.3f')} | "
                      f"{num(r.get('peak_mib'), '.0f')} | {r['outcome']} |")
if rows("kernel"):
    md += ["", "| tokens | NoPE kernel seconds | TFLOP/s | share of peak |", "|---|---|---|---|"]
    md += [f"| {r['tokens']} | {num(r.get('seconds'), '.4f')} | {num(r.get('tflops'), '.0f')} | "
           f"{num(r.get('share_of_peak'), '.1%')} |" for r in rows("kernel")]
if rows("extract"):
    md += ["", "| patch encoder | patches/s | workers | outcome |", "|---|---|---|---|"]
    md += [f"| {r['encoder']} | {num(r.get('patches_per_s'), '.0f')} | {r['workers']} | {r['outcome']} |"
           for r in rows("extract")]
if rows("train_step"):
    md += ["", "| training step | seconds | peak MiB | outcome |", "|---|---|---|---|"]
    md += [f"| {r['slides']} slides x {r['tokens_per_slide']} tokens, checkpointed, bf16 | "
           f"{num(r.get('seconds'), '.3f')} | {num(r.get('peak_mib'), '.0f')} | {r['outcome']} |" for r in rows("train_step")]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF_PY
