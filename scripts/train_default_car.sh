#!/usr/bin/env bash
# The README's training recipe for the car category, one stage per call, on one GPU.
# Every stage is resumable: after an interruption run the same line again.
#   scripts/train_default_car.sh WORK STAGE [MINUTES]
# Stages: render | phase1 | discover | phase2 | refit
# The shipped model (assets/models/car) predates this recipe: it was trained on poses found with options since
# removed (P = 8, `--front-refine`; ARI 0.515). Its exact commands are this script's `discover-front` and
# `phase2-front` stages at commit f57a5d2.
# MESHES defaults to ../shared/meshes/cars. On the offline GPU machine: `source scripts/device_env.sh` first.
set -euo pipefail
WORK=$1; STAGE=$2; MIN=${3:-8}
MESHES=${MESHES:-../shared/meshes/cars}
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
    # phase 1: every label "no pose"; the result is the feature backbone of pose discovery (25 minutes beat 11)
    mirage3d train "$WORK/cars" -o "$WORK/backbone" "${COMMON[@]}" --minutes "$MIN" ;;
  discover)
    mirage3d poses discover "$WORK/cars" -o "$WORK/poses" --backbone "$WORK/backbone" --overwrite
    mirage3d eval poses "$WORK/poses" --collection "$WORK/cars" ;;
  phase2)
    mirage3d train "$WORK/cars" --poses "$WORK/poses" --init "$WORK/backbone" -o "$WORK/model" "${COMMON[@]}" --minutes "$MIN" ;;
  refit)
    # the pose model on the final UNet's own features (same labels), so `views` assigns the input's pose with it
    mirage3d poses refit "$WORK/poses" --backbone "$WORK/model" --collection "$WORK/cars" -o "$WORK/model/poses" --overwrite ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
