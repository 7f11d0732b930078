#!/usr/bin/env bash
# The GPU figures in docs/, in two calls of < 10 minutes each (the offline device machine: `source
# scripts/device_env.sh` first). WORK is scratch space; OUTDIR receives tables (results.md) and artifacts.
#   benchmarks/run_gpu.sh WORK OUTDIR A|B|T|S|P|V|Q|N|D|W|F|G|L|M|E|R
# A: render, refit the shipped model's pose model to its own UNet, make-asset end-to-end eval, views eval.
# B: views speed, recon speed/quality. (Training throughput: benchmarks/bench_multigpu.sh, on its GPU 1.)
# T: make-asset wall time after one warm-up command (the three examples), feature
#    throughput in bf16, and more pose-discovery settings (flat UNet descriptor, t = 100, up0+up1).
# S: speed of the shipped path: recon on 32-view orbits (16 and 8 views), make-asset on the three example
#    images (wall time of the whole command, imports included), make-asset end-to-end eval on 5 objects.
# P: poses on 6,000 renders: a profile of make-asset (import times + cProfile), the discovery sweep with
#    MODEL's UNet (colour permutations, per-image centring), the HOG / random-ViT baselines, feature throughput.
# V: the shipped model as it is (no refit): make-asset end-to-end eval on 5 held-out objects, the sportscar
#    gallery, then E.
# Q: the R sweep (facing + front/back scores, 6,000 renders) for the seeds in SEEDS (default "2 3"), no training;
#    NOISE_MAPS=N averages the UNet features over N noise maps.
# N: the Q sweep with NOISE_MAPS (default 4) for SEEDS (default "0 1"), pose statistics of the last seed's
#    cache (benchmarks/pose_stats_dump.py, into OUTDIR/stats), then the import-time table of make-asset.
# D: discovery against its own seed (benchmarks/bench_part_seeds.py, SEEDS default 0-7, part k-means runs 4 and 16).
# W: make-asset through `mirage3d serve` (client wall time, each example twice), then E's cold commands on the same machine.
# F: render, then phase 1 (the offline feature backbone) for MIN minutes (default 6) into WORK/backbone.
# G: D's seed study on F's backbone (SEEDS default 0-3); run right after F, while the machine holds WORK.
# L: render, then a longer phase 1 continued from the backbone INIT (e.g. a carried phase-1 folder) in the
#    background (setsid, so it outlives the call while the machine is held): chunks of CHUNKS minutes (default
#    "9 8"), each exported to WORK/snapN; meanwhile G's seed study on INIT.
# M: wait for WORK/snapSNAP (from L), G's seed study on it, pose statistics of its cache into OUTDIR/stats.
# X: pose statistics for study off the GPU machine: 6,000 renders of render seeds 0 and 1, MODEL's features (t = 200,
#    up0, flip image), descriptors of part models P = 8 and 16 with part seeds 0-7 (benchmarks/pose_stats_dump.py)
#    into OUTDIR/stats_cars (no pooled features: the same as M's) and OUTDIR/stats_cars1 (with them).
# Y: the README's discovery recipe through the CLI (`mirage3d poses discover` + `mirage3d eval poses`) with MODEL as
#    the backbone, on 6,000 renders of render seed 0 (SEEDS, default 0-7) and render seed 1 (SEEDS1, default 0-3).
# E: make-asset on the three example images (wall time of each command), GLBs sent back as examples_gpu.tar.
# R: the facing + front/back scores on 6,000 renders (two seeds), then the shipped model's retraining
#    (scripts/train_default_car.sh discover-front, phase2-front for MIN minutes), packed and sent back as
#    model.tar.part-* (join with cat, untar into assets/models/car).
set -uo pipefail
W=$1; O=$2; PART=$3
MESHES=${MESHES:-../shared/meshes/cars}; MODEL=${MODEL:-assets/models/car}
mkdir -p "$W" "$O"
log() { echo; echo "## $*"; } >> "$O/results.md"
run() { local t=$1; shift; timeout "$t" "$@" 2>&1 | grep -E "^\|" >> "$O/results.md"; }
render_cars() { [ -f "$W/cars/config.json" ] || mirage3d data render "$MESHES" -o "$W/cars" --n-per-mesh 400 --res 128 --workers 16 --seed 0 > /dev/null; }
render_cars1() { [ -f "$W/cars1/config.json" ] || mirage3d data render "$MESHES" -o "$W/cars1" --n-per-mesh 400 --res 128 --workers 16 --seed 1 > /dev/null; }
render_heldout() { [ -f "$W/heldout/config.json" ] || mirage3d data render "$MESHES" -o "$W/heldout" --n-per-mesh 4 --res 128 --orbits 16 --workers 16 --seed 12345 > /dev/null; }
front_sweep() {  # SEEDS PREFIX: bench_poses off / facing / facing + front/back on the 6,000 renders, into $W/PREFIX<seed>
  for seed in $1; do
    log "pose discovery, facing + front/back scores, seed $seed (MODEL's UNet, t = 200, up0, P = 8, w 0,1,0, 6,000 renders)"
    run 200 python3 benchmarks/bench_poses.py --collection "$W/cars" --backbone "$MODEL" --out "$W/$2$seed" --timesteps 200 --parts 8 \
        --weights "0,1,0" --w-facing 0,0.5 --w-front 0,0.5 --seed "$seed" --device cuda --workers 16 --noise-maps "${NOISE_MAPS:-1}" --batch-size 128
  done
}
examples() { time_examples ""; tar cf "$O/examples_gpu.tar" -C "$W" sportscar.glb basic_taxi.glb suv.glb; }
time_examples() {  # make-asset on the three example images: stage table and wall time of each command
  for ex in sportscar basic_taxi suv; do
    log "make-asset assets/examples/$ex.png (GPU, 50 steps$1, wall time of the command)"
    local s0; s0=$(date +%s.%N)
    timeout 90 mirage3d make-asset "assets/examples/$ex.png" -o "$W/$ex.glb" --model "$MODEL" --steps 50 --overwrite 2>&1 | tail -12 >> "$O/results.md"
    echo "wall: $(python3 -c "print(f'{$(date +%s.%N) - $s0:.1f}')") s" >> "$O/results.md"
  done
}
nvidia-smi --query-gpu=name --format=csv,noheader >> "$O/results.md"
if [ "$PART" = A ]; then
  render_cars
  render_heldout
  # pose model on the final UNet's features (same labels/cameras); the model refers to its own UNet as ".."
  mirage3d poses refit "$MODEL/poses" --backbone "$MODEL" --collection "$W/cars" -o "$W/refit" --timestep 200 --blocks up0 --overwrite | tail -2
  python3 - "$W/refit/pose_model.json" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); d["backbone"]["path"] = ".."; json.dump(d, open(p, "w"), indent=2)
PY
  cp "$W/refit/pose_model.json" "$W/refit/pose_model.safetensors" "$MODEL/poses/"
  tar cf "$O/refit.tar" -C "$W" refit
  log "make-asset end to end on held-out appearances (orbit frame 1 as input, 50 steps)"
  run 170 python3 benchmarks/eval_asset.py --collection "$W/heldout" --model "$MODEL" --out "$W/asset" --objects 5 --steps 50 --device cuda
  cp "$W/asset/eval_asset.json" "$O/"
  log "make-asset on assets/examples/sportscar.png (GPU)"
  timeout 60 mirage3d make-asset assets/examples/sportscar.png -o "$W/sportscar.glb" --model "$MODEL" --steps 50 --preview --keep-views "$W/sc_views" --overwrite 2>&1 | tail -12 >> "$O/results.md"
  tar cf "$O/gallery.tar" -C "$W" sportscar.glb sportscar.preview.png sc_views/contact_sheet.png asset
  log "views fidelity (3 rows)"
  run 120 python3 benchmarks/eval_views.py --model "$MODEL" --orbits-dir "$W/heldout/orbits" --input-frame 1 --steps 50 --hard 1.0 --max-objects 6 --device cuda --out "$W/ev"
elif [ "$PART" = P ]; then
  render_cars
  python3 -X importtime -m mirage3d.cli make-asset assets/examples/suv.png -o "$W/p1.glb" --model "$MODEL" --steps 50 --overwrite 2> "$O/importtime.txt" | tail -9 >> "$O/results.md"
  timeout 60 python3 -m cProfile -o "$O/make_asset.prof" -m mirage3d.cli make-asset assets/examples/suv.png -o "$W/p2.glb" --model "$MODEL" --steps 50 --overwrite > /dev/null 2>&1
  log "pose discovery sweep, MODEL's UNet (t = 200, up0), 6,000 renders"
  run 300 python3 benchmarks/bench_poses.py --collection "$W/cars" --backbone "$MODEL" --out "$W/bp" --timesteps 200 --parts 8,16 \
      --weights "1,1,0.5;0.25,1,0.25" --colour-perms 1,6 --centre 0,1 --device cuda --workers 16
  cp "$W/bp/bench_poses.json" "$O/" 2>/dev/null
  log "baselines on the same 6,000 renders"
  run 100 python3 benchmarks/bench_poses.py --collection "$W/cars" --out "$W/bpb" --baselines --parts 16 --weights "1,1,0.5" --device cuda --workers 16
  log "feature extraction throughput"
  run 50 python3 benchmarks/bench_features.py --backbone "$MODEL" --devices cuda --collection "$W/cars" --out "$W/bf"
elif [ "$PART" = V ]; then
  render_heldout
  log "make-asset end to end on held-out appearances (orbit frame 1 as input, 50 steps)"
  run 170 python3 benchmarks/eval_asset.py --collection "$W/heldout" --model "$MODEL" --out "$W/asset" --objects 5 --steps 50 --device cuda
  cp "$W/asset/eval_asset.json" "$O/"
  timeout 60 mirage3d make-asset assets/examples/sportscar.png -o "$W/sportscar.glb" --model "$MODEL" --steps 50 --preview --keep-views "$W/sc_views" --overwrite > /dev/null 2>&1
  tar cf "$O/gallery.tar" -C "$W" sportscar.glb sportscar.preview.png sc_views/contact_sheet.png asset
  examples
elif [ "$PART" = Q ]; then
  render_cars
  front_sweep "${SEEDS:-2 3}" bq
elif [ "$PART" = N ]; then
  render_cars
  NOISE_MAPS=${NOISE_MAPS:-4}
  front_sweep "${SEEDS:-0 1}" bn
  last=${SEEDS:-0 1}; last=${last##* }
  timeout 60 python3 benchmarks/pose_stats_dump.py "$W/bn$last/features/unet_t200_up0_nm${NOISE_MAPS}_image" "$W/cars" "$O/stats" --parts 8 --device cuda >> "$O/results.md" 2>&1
  log "import times (fresh interpreters, best of 1)"
  run 170 python3 benchmarks/bench_imports.py --repeats 1 --cuda
elif [ "$PART" = D ]; then
  render_cars
  log "pose discovery against its seed (MODEL's UNet, t = 200, up0, noise seed 0, P = 8, w 0,1,0, K = 8, 6,000 renders)"
  run 480 python3 benchmarks/bench_part_seeds.py --collection "$W/cars" --backbone "$MODEL" --out "$W/ps" --seeds "${SEEDS:-0-7}" --part-inits 4,16 --device cuda --workers 16
  cp "$W/ps/bench_part_seeds.json" "$O/" 2>/dev/null
elif [ "$PART" = W ]; then
  log "make-asset through a warm server (mirage3d serve, MODEL, cuda): wall time of each client command"
  s0=$(date +%s.%N)
  mirage3d serve --model "$MODEL" --device cuda --port 8765 > "$W/serve.log" 2>&1 &
  until python3 -c "from mirage3d.serve import server_health; server_health('http://127.0.0.1:8765')" 2>/dev/null; do sleep 0.5; done
  echo "server ready after $(python3 -c "print(f'{$(date +%s.%N) - $s0:.1f}')") s (imports + model load): $(head -1 "$W/serve.log")" >> "$O/results.md"
  for ex in suv sportscar basic_taxi suv sportscar basic_taxi; do
    log "make-asset assets/examples/$ex.png --server (50 steps)"
    s0=$(date +%s.%N)
    timeout 90 mirage3d make-asset "assets/examples/$ex.png" -o "$W/srv_$ex.glb" --server http://127.0.0.1:8765 --steps 50 --overwrite 2>&1 | tail -14 >> "$O/results.md"
    echo "wall: $(python3 -c "print(f'{$(date +%s.%N) - $s0:.1f}')") s" >> "$O/results.md"
  done
  tar cf "$O/served.tar" -C "$W" srv_suv.glb srv_sportscar.glb srv_basic_taxi.glb serve.log
  time_examples " (no server, same machine)"
elif [ "$PART" = F ]; then
  render_cars
  log "phase 1 (the offline backbone, = mirage3d features train) for MIN minutes"
  bash scripts/train_default_car.sh "$W" phase1 "${MIN:-6}" > "$W/phase1.log" 2>&1; tail -3 "$W/phase1.log" >> "$O/results.md"
elif [ "$PART" = G ]; then
  log "pose discovery against its seed on the phase-1 backbone of F (t = 200, up0, P = 8, w 0,1,0, K = 8, 6,000 renders)"
  run 480 python3 benchmarks/bench_part_seeds.py --collection "$W/cars" --backbone "$W/backbone" --out "$W/ps1" --seeds "${SEEDS:-0-3}" --part-inits 4 --device cuda --workers 16 ${FC:+--facing-component $FC}
  cp "$W/ps1/bench_part_seeds.json" "$O/" 2>/dev/null
elif [ "$PART" = L ]; then
  render_cars
  if [ ! -f "$W/long.started" ]; then
    touch "$W/long.started"
    setsid nohup bash -c 'i=0; for m in '"${CHUNKS:-9 8}"'; do i=$((i+1))
      mirage3d train "$0/cars" --init "$1" -o "$0/long" --batch-size 128 --seed 0 --checkpoint-every 500 --keep-checkpoints 2 \
        --sample-every 1500 --sample-steps 50 --max-steps 200000 --compile --minutes "$m" >> "$0/long.log" 2>&1
      mkdir -p "$0/snap$i"; for f in "$0"/long/*; do [ "$(basename "$f")" = checkpoints ] || cp -r "$f" "$0/snap$i/"; done
      touch "$0/snap$i.done"; done' "$W" "$INIT" > /dev/null 2>&1 < /dev/null &
  fi
  log "pose discovery against its seed on INIT (t = 200, up0, P = 8, w 0,1,0, K = 8, 6,000 renders), while phase 1 continues from it"
  run 420 python3 benchmarks/bench_part_seeds.py --collection "$W/cars" --backbone "$INIT" --out "$W/ps_init" --seeds "${SEEDS:-0-3}" --part-inits 4 --device cuda --workers 16 ${FC:+--facing-component $FC}
elif [ "$PART" = X ]; then
  render_cars
  render_cars1
  for c in cars cars1; do
    log "pose statistics of $c (MODEL's UNet, t = 200, up0, P = 8 and 16, part seeds 0-7)"
    mirage3d features extract "$W/$c" -o "$W/f_$c" --backbone "$MODEL" --timestep 200 --blocks up0 --flip image --device cuda > /dev/null 2>&1
    timeout 240 python3 benchmarks/pose_stats_dump.py "$W/f_$c" "$W/$c" "$O/stats_$c" --parts 8,16 --seeds 0-7 --device cuda >> "$O/results.md" 2>&1
  done
  rm -f "$O"/stats_cars/pooled*.safetensors
elif [ "$PART" = Y ]; then
  render_cars
  render_cars1
  for c in cars cars1; do
    rs=${c#cars}
    log "mirage3d poses discover on $c (render seed ${rs:-0}; backbone MODEL, -k 8 --timestep 200 --w-facing 0.35 --w-front 0.5 --facing-component 2, other options default: P = 16, weights 0.25 / 1 / 0.25)"
    echo "| discovery seed | ARI | NMI | median az err | discover wall time (s) |" >> "$O/results.md"; echo "|---|---|---|---|---|" >> "$O/results.md"
    seeds=${SEEDS:-0 1 2 3 4 5 6 7}; [ "$c" = cars1 ] && seeds=${SEEDS1:-0 1 2 3}
    for seed in $seeds; do
      t0=$(date +%s.%N)
      mirage3d poses discover "$W/$c" -o "$W/py_$c$seed" --backbone "$MODEL" --features "$W/f_$c" -k 8 --timestep 200 --w-facing 0.35 \
        --w-front 0.5 --facing-component 2 --seed "$seed" --device cuda --overwrite > "$W/py_$c$seed.log" 2>&1 || tail -3 "$W/py_$c$seed.log" >> "$O/results.md"
      t1=$(date +%s.%N)
      mirage3d eval poses "$W/py_$c$seed" --collection "$W/$c" > /dev/null && python3 -c "import json, sys; m = json.load(open(sys.argv[1]))
print(f\"| $seed | {m['ari']:.3f} | {m['nmi']:.3f} | {m['median_error_deg']:.1f} | {$t1 - $t0:.0f} |\")" "$W/py_$c$seed/eval.json" >> "$O/results.md"
    done
  done
  cp "$W/py_cars0/poses_sheet.png" "$O/poses_sheet_cars_seed0.png" 2>/dev/null
elif [ "$PART" = M ]; then
  until [ -f "$W/snap$SNAP.done" ]; do sleep 5; done
  grep -E "trained|step" "$W/long.log" | tail -2 >> "$O/results.md"
  log "pose discovery against its seed on snapshot $SNAP of the continued phase 1 (t = 200, up0, P = 8, w 0,1,0, K = 8, 6,000 renders)"
  run 420 python3 benchmarks/bench_part_seeds.py --collection "$W/cars" --backbone "$W/snap$SNAP" --out "$W/ps$SNAP" --seeds "${SEEDS:-0-3}" --part-inits 4 --device cuda --workers 16 ${FC:+--facing-component $FC}
  timeout 60 python3 benchmarks/pose_stats_dump.py "$W/ps$SNAP/features" "$W/cars" "$O/stats" --parts 8 --device cuda >> "$O/results.md" 2>&1
  cp "$W/snap$SNAP/train_config.json" "$O/" 2>/dev/null
elif [ "$PART" = E ]; then
  examples
elif [ "$PART" = R ]; then
  render_cars
  front_sweep "0 1" bf
  cp "$W/bf0/bench_poses.json" "$O/bench_poses_front.json"
  log "where the poses go wrong, --w-facing 0.5 --w-front 0.5 (seed 0)"
  python3 benchmarks/pose_confusion.py "$W/bf0/poses/unet_t200_up0_image_parts_K8_P8_w0-1-0_facing0.5_front0.5" "$W/cars" >> "$O/results.md" 2>&1
  log "discover-front (the new shipped labels)"
  BACKBONE=$MODEL bash scripts/train_default_car.sh "$W" discover-front 2>&1 | tail -3 >> "$O/results.md"
  cp "$W/poses_front/poses_sheet.png" "$O/" 2>/dev/null
  log "phase2-front"
  BACKBONE=$MODEL bash scripts/train_default_car.sh "$W" phase2-front "${MIN:-4}" > "$W/train.log" 2>&1; tail -5 "$W/train.log" >> "$O/results.md"
  python3 scripts/pack_model.py "$W/model_front" "$W/packed" --dtype bf16 --overwrite >> "$O/results.md" 2>&1
  tar cf - -C "$W" packed | split -b 15M - "$O/model.tar.part-"
elif [ "$PART" = T ]; then
  render_cars
  mirage3d make-asset assets/examples/suv.png -o "$W/warm.glb" --model "$MODEL" --steps 50 --overwrite > /dev/null 2>&1
  time_examples ", after one warm-up command"
  log "feature extraction throughput, bf16"
  run 60 python3 benchmarks/bench_features.py --backbone "$MODEL" --devices cuda --dtypes bfloat16 --baselines "" --collection "$W/cars" --out "$W/bf"
  log "pose discovery: flat UNet descriptor, t = 100, up0+up1 (MODEL's UNet, 6,000 renders)"
  run 300 python3 benchmarks/bench_poses.py --collection "$W/cars" --backbone "$MODEL" --out "$W/bp" --timesteps 200,100 --blocks "up0;up0,up1" \
      --parts 8,16 --weights "0.25,1,0.25" --modes parts,flat --device cuda --workers 16
  cp "$W/bp/bench_poses.json" "$O/" 2>/dev/null
elif [ "$PART" = S ]; then
  log "recon on orbit renders (32-view orbits; 16 or 8 for training, the rest held out)"
  run 200 python3 benchmarks/bench_recon.py --meshes "$MESHES" --limit 3 --views 16 8 --device cuda --out "$W/br"
  examples
  render_heldout
  log "make-asset end to end on held-out appearances (orbit frame 1 as input, 50 steps)"
  run 240 python3 benchmarks/eval_asset.py --collection "$W/heldout" --model "$MODEL" --out "$W/asset" --objects 5 --steps 50 --device cuda
  cp "$W/asset/eval_asset.json" "$O/"
else
  log "views speed (H100, random weights, bf16)"
  run 60 python3 benchmarks/bench_views.py --views 8,16 --steps 25,50 --hard 0,1 --device cuda --repeats 2
  log "recon on orbit renders"
  render_heldout
  run 90 python3 benchmarks/bench_recon.py --collection "$W/heldout" --views 16 8 --limit 3 --device cuda --out "$W/br"
fi
