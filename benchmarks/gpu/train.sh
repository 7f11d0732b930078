#!/usr/bin/env bash
# Training figures on the GPU (docs/training.md): phase 1 of `mirage3d train` on 6,000 car renders (the pose
# backbone that benchmarks/gpu/poses.sh then uses), and the training-throughput table. From the repo root:
#   source scripts/device_env.sh && bash benchmarks/gpu/train.sh OUT
# 1. Renders 6,000 car views (15 cars x N_PER_MESH 400, 128², render seed 0) from MESHES (default .carry/meshes/cars).
# 2. Phase 1 (`mirage3d train cars -o WORK/backbone --batch-size 128 --compile`) for MIN minutes (default 5); run
#    again, it resumes and trains MIN minutes more (the checkpoints are in WORK/backbone).
# 3. With THROUGHPUT=1, benchmarks/bench_train.py --steps 40 --warmup 10 (plain diffusers loop against ours) first.
# Runtime: about MIN + 1 minutes (+ 2 with THROUGHPUT=1) on an H200. WORK (default /tmp/mirage3d-gpu) survives
# between calls while the machine is warm. SMOKE=1: 2 views per mesh, the tiny preset for 2 steps on the CPU.
# Writes OUT/train.md (summary, throughput table), OUT/loss.jsonl, OUT/samples.png and OUT/log.txt.
set -uo pipefail
O=${1:?usage: bash benchmarks/gpu/train.sh OUT}
W=${WORK:-/tmp/mirage3d-gpu}; MESHES=${MESHES:-.carry/meshes/cars}; N=${N_PER_MESH:-400}; MIN=${MIN:-5}
ARGS=(--batch-size 128 --compile --seed 0 --checkpoint-every 500 --sample-every 1500 --max-steps 200000)
BT=(--steps 40 --warmup 10)
if [ "${SMOKE:-0}" = 1 ]; then N=2; MIN=1; ARGS=(--model tiny --max-steps 2 --batch-size 4 --sample-steps 2 --cpu); BT=(--steps 2 --warmup 1 --n-images 16); fi
mkdir -p "$W" "$O"
LOG="$O/log.txt"
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
stamp "render seed 0: $N views per mesh"
[ -f "$W/cars0/config.json" ] || mirage3d data render "$MESHES" -o "$W/cars0" --n-per-mesh "$N" --res 128 --workers "$(nproc)" --seed 0 >> "$LOG" 2>&1 || exit 1
{
  echo "# Training ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu), $(date +%F))"
  if [ "${THROUGHPUT:-0}" = 1 ]; then
    echo; echo "## Throughput (benchmarks/bench_train.py ${BT[*]})"
    python3 benchmarks/bench_train.py --out "$W/bt" "${BT[@]}" 2>> "$LOG" | grep -E "^\|"
  fi
  echo; echo "## Phase 1 for $MIN minutes: mirage3d train cars0 -o backbone ${ARGS[*]}"
  COLUMNS=250 mirage3d train "$W/cars0" -o "$W/backbone" "${ARGS[@]}" --minutes "$MIN" 2>> "$LOG" | tail -3
} | tee "$O/train.md"
cp "$W/backbone/loss.jsonl" "$O/" 2>/dev/null
cp "$(ls "$W"/backbone/samples/*.png 2>/dev/null | tail -1)" "$O/samples.png" 2>/dev/null
stamp done
