#!/usr/bin/env bash
# Fine-tune the shipped car model on renders with random shape deformations, and evaluate it on the shapes it
# never saw (issue 19's "more shape variation"). Every stage is resumable: after an interruption run it again.
#   scripts/finetune_car.sh WORK STAGE [MINUTES]
# Stages: render | label | train | refit | eval
# REFERENCE=1: a reference-conditioned model (train --reference, docs/training.md): 800 renders per shape in
# objects of 8 views. A later chunk after the machine was lost: INIT=the chunk's model folder, POSES=its poses/.
# MESHES (default ../shared/meshes/cars, the shipped model's 15 shapes) are trained on; HELDOUT (default
# ../shared/meshes/cars-more) stays unseen for the evaluation. On the offline GPU machine: `source
# scripts/device_env.sh` first. train needs about 2.5 minutes of torch.compile before its first step on an H200.
set -euo pipefail
WORK=$1; STAGE=$2; MIN=${3:-8}
MESHES=${MESHES:-../shared/meshes/cars}; HELDOUT=${HELDOUT:-../shared/meshes/cars-more}; BASE=${BASE:-assets/models/car}
INIT=${INIT:-$BASE}; POSES=${POSES:-$WORK/poses}
if [ "${REFERENCE:-0}" = 1 ]; then RENDER=(--n-per-mesh 800 --views-per-object 8); TRAIN=(--reference); else RENDER=(--n-per-mesh 400); TRAIN=(); fi
case "$STAGE" in
  render)
    [ -f "$WORK/cars/config.json" ] || mirage3d data render "$MESHES" -o "$WORK/cars" "${RENDER[@]}" --res 128 --deform 0.2 --workers 16 --seed 1
    [ -f "$WORK/heldout/config.json" ] || mirage3d data render "$HELDOUT" -o "$WORK/heldout" --n-per-mesh 1 --res 128 --orbits 16 --workers 16 --seed 12345 ;;
  label)
    # the base model's poses for the new images (no labels are read: its pose model assigns them)
    [ -f "$POSES/poses.json" ] || mirage3d poses label "$WORK/cars" --poses "$BASE/poses" -o "$WORK/poses" ;;
  train)
    mirage3d train "$WORK/cars" --poses "$POSES" --init "$INIT" "${TRAIN[@]}" -o "$WORK/model" --model small --batch-size 128 --seed 0 \
      --checkpoint-every 500 --keep-checkpoints 2 --sample-every 1000 --sample-steps 50 --compile --save-dtype bf16 --max-steps 4000 --minutes "$MIN" ;;
  refit)
    mirage3d poses refit "$POSES" --backbone "$WORK/model" --collection "$WORK/cars" -o "$WORK/model/poses" --overwrite ;;
  eval)
    python3 benchmarks/eval_asset.py --collection "$WORK/heldout" --model "$WORK/model" --out "$WORK/eval" --objects 2 --input-frames 1,2,6 \
      --steps 50 --variants independent,all-views --templates "$MESHES" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
