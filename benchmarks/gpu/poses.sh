#!/usr/bin/env bash
# Pose-discovery figures on the GPU (docs/poses.md, "Measured"), through the real CLI. From the repo root:
#   source scripts/device_env.sh && bash benchmarks/gpu/poses.sh OUT
# 1. Renders 6,000 car views (15 cars x N_PER_MESH 400, 128²) for render seeds 0 and 1 from MESHES
#    (default .carry/meshes/cars).
# 2. The backbone: BACKBONE if set (a model folder); else WORK/backbone if benchmarks/gpu/train.sh made one on this
#    machine; else assets/models/car if its weights are there; else phase 1 trained here for TRAIN_MIN minutes
#    (default 3; `mirage3d train cars -o WORK/backbone --compile`, as train.sh does).
# 3. benchmarks/bench_poses.py on both render sets: the defaults (SEEDS, default "0-2"), the old defaults
#    (`--timestep 100 --w-facing 0 --w-front 0`) and the HOG backbone with the defaults (BASE_SEEDS, default "0").
# Runtime (H200, the renders and caches not yet made): about 6-7 minutes with a backbone at hand, plus
# TRAIN_MIN when it trains one. WORK (default /tmp/mirage3d-gpu) survives between calls while the machine is
# warm, so a second call reuses renders, backbone and feature caches. SMOKE=1: 2 views per mesh, one seed,
# a 2-step tiny backbone on the CPU if none is given (checks the script, not the numbers).
# Writes OUT/poses.md (the tables), OUT/bench_poses.json, OUT/poses_sheet.png (defaults, render seed 0, seed 0)
# and OUT/log.txt.
set -uo pipefail
O=${1:?usage: bash benchmarks/gpu/poses.sh OUT}
W=${WORK:-/tmp/mirage3d-gpu}; MESHES=${MESHES:-.carry/meshes/cars}; N=${N_PER_MESH:-400}
SEEDS=${SEEDS:-0-2}; BASE_SEEDS=${BASE_SEEDS:-0}; DEVICE=${DEVICE:-cuda}; TRAIN_MIN=${TRAIN_MIN:-3}
TRAIN_ARGS=(--batch-size 128 --compile --seed 0)
if [ "${SMOKE:-0}" = 1 ]; then N=2; SEEDS=0; BASE_SEEDS=0; DEVICE=${DEVICE_SMOKE:-cpu}; TRAIN_ARGS=(--model tiny --max-steps 2 --batch-size 4 --sample-steps 2 --cpu); fi
mkdir -p "$W" "$O"
LOG="$O/log.txt"
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
for rs in 0 1; do
  stamp "render seed $rs: $N views per mesh"
  [ -f "$W/cars$rs/config.json" ] || mirage3d data render "$MESHES" -o "$W/cars$rs" --n-per-mesh "$N" --res 128 --workers "$(nproc)" --seed "$rs" >> "$LOG" 2>&1 || exit 1
done
if [ -n "${BACKBONE:-}" ]; then BB=$BACKBONE
elif [ -f "$W/backbone/model_index.json" ]; then BB=$W/backbone
elif ls assets/models/car/unet/*.safetensors > /dev/null 2>&1; then BB=assets/models/car
else
  stamp "phase 1 (the backbone) for $TRAIN_MIN minutes"
  mirage3d train "$W/cars0" -o "$W/backbone" "${TRAIN_ARGS[@]}" --minutes "$TRAIN_MIN" >> "$LOG" 2>&1 || exit 1
  BB=$W/backbone
fi
stamp "pose discovery with backbone $BB"
{
  echo "# Pose discovery through the CLI ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu), $(date +%F))"
  echo "Backbone: $BB; renders: $N per mesh x 15 cars, 128², render seeds 0 and 1 (cars0, cars1)."
  echo
  python3 benchmarks/bench_poses.py --collection "$W/cars0" --collection "$W/cars1" --backbone "$BB" --out "$W/bp" --seeds "$SEEDS" --device "$DEVICE" \
    --setting "defaults="
  echo
  python3 benchmarks/bench_poses.py --collection "$W/cars0" --collection "$W/cars1" --backbone "$BB" --out "$W/bp_base" --seeds "$BASE_SEEDS" --device "$DEVICE" \
    --setting "old defaults=--timestep 100 --w-facing 0 --w-front 0" --setting "HOG=--backbone hog"
} 2>> "$LOG" | tee "$O/poses.md"
cp "$W/bp/bench_poses.json" "$O/" 2>/dev/null
cp "$W/bp/cars0/defaults/seed${SEEDS%%[-,]*}/poses_sheet.png" "$O/poses_sheet.png" 2>/dev/null
stamp done
