#!/usr/bin/env bash
# The held-out evaluation model of issue 19 (docs/asset.md, "Held-out evaluation model"): a car model trained from
# scratch on 13 of the 17 shared car shapes, so that make-asset can be scored on 4 shapes no weight ever saw.
#   scripts/train_eval_car.sh WORK STAGE [MINUTES]
# Stages: meshes | render | label | train | refit | eval
# Split (fixed; the two of cars/ drawn by `random.seed(19); random.sample(sorted(find_meshes('cars')), 2)`):
#   held out: cars/quaternius-realistic-Cop_SUV, cars/kenney/hatchback-sports, cars-more/* (2)
#   trained on: the other 13 of cars/
# Data: 460 renders per shape (5,980) with random smooth shape deformations (--deform 0.2), labelled with the
# shipped model's pose model (`poses label`: pose labels only; the UNet trained here starts from random weights).
# train runs in chunks of MINUTES; a later chunk on a fresh machine: INIT=<the last chunk's model folder>
# (the weights; the optimizer starts again with its warm-up). On the offline GPU machine: `source
# scripts/device_env.sh` first.
set -euo pipefail
WORK=$1; STAGE=$2; MIN=${3:-8}
SHARED=${SHARED:-../shared/meshes}; BASE=${BASE:-assets/models/car}
HELD=(quaternius-realistic-Cop_SUV hatchback-sports)
case "$STAGE" in
  meshes)
    # folders of links: the meshes keep their file names (meshes.json is keyed by them) and Kenney's textures
    rm -rf "$WORK/meshes-train" "$WORK/meshes-heldout"; mkdir -p "$WORK/meshes-train/kenney" "$WORK/meshes-heldout/kenney"
    for f in "$SHARED"/cars/*.glb "$SHARED"/cars/kenney/*.glb; do
      sub=""; [ "$(basename "$(dirname "$f")")" = kenney ] && sub=kenney/
      dest="$WORK/meshes-train/$sub"
      for h in "${HELD[@]}"; do [ "$(basename "$f" .glb)" = "$h" ] && dest="$WORK/meshes-heldout/$sub"; done
      ln -s "$(realpath "$f")" "$dest"
    done
    for d in meshes-train meshes-heldout; do ln -s "$(realpath "$SHARED/cars/kenney/Textures")" "$WORK/$d/kenney/Textures"; done
    for f in "$SHARED"/cars-more/*.glb; do ln -s "$(realpath "$f")" "$WORK/meshes-heldout/"; done
    echo "train: $(find -L "$WORK/meshes-train" -name '*.glb' | wc -l) meshes, held out: $(find -L "$WORK/meshes-heldout" -name '*.glb' | wc -l)" ;;
  render)
    [ -f "$WORK/cars/config.json" ] || mirage3d data render "$WORK/meshes-train" -o "$WORK/cars" --n-per-mesh 460 --res 128 --deform 0.2 --workers 16 --seed 1
    [ -f "$WORK/heldout/config.json" ] || mirage3d data render "$WORK/meshes-heldout" -o "$WORK/heldout" --n-per-mesh 1 --res 128 --orbits 16 --workers 16 --seed 12345 ;;
  label)
    [ -f "$WORK/poses/poses.json" ] || mirage3d poses label "$WORK/cars" --poses "$BASE/poses" -o "$WORK/poses" ;;
  train)
    mirage3d train "$WORK/cars" --poses "$WORK/poses" ${INIT:+--init "$INIT"} -o "$WORK/model" --model small --batch-size 128 --seed 0 \
      --checkpoint-every 500 --keep-checkpoints 1 --sample-every 100000 --sample-steps 50 --compile --save-dtype bf16 --max-steps 6000 --minutes "$MIN" ;;
  refit)
    mirage3d poses refit "$WORK/poses" --backbone "$WORK/model" --collection "$WORK/cars" -o "$WORK/model/poses" --overwrite ;;
  eval)
    python3 benchmarks/eval_asset.py --collection "$WORK/heldout" --model "$WORK/model" --out "$WORK/eval" --objects 4 --input-frames 1,2,6 \
      --steps 50 --variants independent,all-views --templates "$WORK/meshes-train" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
