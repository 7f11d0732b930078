#!/usr/bin/env bash
# The recipe of the shipped default car model (assets/models/car), one stage per call, on one GPU.
# Every stage is resumable: after an interruption run the same line again.
#   scripts/train_default_car.sh WORK STAGE [MINUTES]
# Stages: render | phase1 | sweep | discover | phase2 | discover-front | phase2-front
# The shipped model since 2026-11-26 (third session) is phase2-front: the phase-2 model continued with the poses
# that the facing and front/back scores find in its own features (docs/poses.md); BACKBONE = that phase-2 model.
# MESHES defaults to ../shared/meshes/cars. On the offline GPU machine: `source scripts/device_env.sh` first.
set -euo pipefail
WORK=$1; STAGE=$2; MIN=${3:-8}
MESHES=${MESHES:-../shared/meshes/cars}
K=${K:-8}; P=${P:-16}; T=${T:-100}; BLOCKS=${BLOCKS:-up0}
# The UNet: "small" preset (19.4 M parameters), 128², v-prediction with the cosine schedule in both phases
# (phase 2 continues phase 1). An epsilon/linear phase 1 of 2.1k steps gave noisy, grey samples.
COMMON=(--model small --batch-size 128 --seed 0
        --checkpoint-every 500 --keep-checkpoints 2 --sample-every 1500 --sample-steps 50 --max-steps 200000 --compile)
case "$STAGE" in
  render)
    [ -f "$WORK/cars/config.json" ] || mirage3d data render "$MESHES" -o "$WORK/cars" --n-per-mesh 400 --res 128 --orbits 16 --workers 16 --seed 0
    # held-out appearance seeds (never trained on) for the end-to-end evaluation
    [ -f "$WORK/heldout/config.json" ] || mirage3d data render "$MESHES" -o "$WORK/heldout" --n-per-mesh 4 --res 128 --orbits 16 --workers 16 --seed 12345 ;;
  phase1)
    # = `mirage3d features train` (phase 1: every label "no pose"), with the objective options spelled out
    mirage3d train "$WORK/cars" -o "$WORK/backbone" "${COMMON[@]}" --minutes "$MIN" ;;
  sweep)
    python3 benchmarks/bench_poses.py --collection "$WORK/cars" --backbone "$WORK/backbone" --out "$WORK/sweep" \
      --poses "$K" --parts 8,16,24 --timesteps 50,100,200,400 --baselines --device cuda ;;
  discover)
    mirage3d poses discover "$WORK/cars" -o "$WORK/poses" --backbone "$WORK/backbone" -k "$K" -p "$P" --timestep "$T" --blocks "$BLOCKS" --seed 0 --overwrite
    mirage3d eval poses "$WORK/poses" --collection "$WORK/cars" ;;
  phase2)
    mirage3d train "$WORK/cars" --poses "$WORK/poses" --init "$WORK/backbone" -o "$WORK/model" "${COMMON[@]}" --minutes "$MIN" ;;
  discover-front)
    mirage3d poses discover "$WORK/cars" -o "$WORK/poses_front" --backbone "${BACKBONE:-assets/models/car}" -k "$K" -p 8 --timestep 200 --blocks up0 \
      --w-visibility 0 --w-box 0 --w-facing 0.5 --w-front 0.5 --front-refine --seed 0 --overwrite
    mirage3d eval poses "$WORK/poses_front" --collection "$WORK/cars" ;;
  phase2-front)
    mirage3d train "$WORK/cars" --poses "$WORK/poses_front" --init "${BACKBONE:-assets/models/car}" -o "$WORK/model_front" "${COMMON[@]}" --minutes "$MIN" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
