#!/usr/bin/env bash
# make-asset and views figures on the GPU (docs/asset.md, docs/views.md) with a trained model. From the repo root:
#   source scripts/device_env.sh && bash benchmarks/gpu/asset.sh OUT
# MODEL (default assets/models/car) must hold its weights on the device: carry them if the checkout lacks them.
# PARTS (default "eval examples") picks, in this order:
#   eval      benchmarks/eval_asset.py: make-asset on 5 held-out objects (orbit renders in the meshes' own colours,
#             render seed 12345), views PSNR / SSIM / mask IoU and mesh Chamfer / F-score (about 3 minutes)
#   examples  make-asset on the three assets/examples images, wall time of each one-shot command (about 1.5 minutes)
#   serve     the same through `mirage3d serve` (server start-up, then each example twice) (about 1.5 minutes)
#   views     benchmarks/eval_views.py on 6 held-out orbits (independent / cross-frame rows)
#             and benchmarks/bench_views.py speed (about 3 minutes)
#   imports   benchmarks/bench_imports.py --repeats 1 --cuda (about 2.5 minutes)
# Keep one call under 8 minutes: at most "eval examples" or "serve views" or "views imports" together.
# WORK (default /tmp/mirage3d-gpu) survives between calls while the machine is warm. SMOKE=1: 1 object, 2 steps,
# on the CPU (checks the script, not the numbers). Writes OUT/asset.md, OUT/eval_asset.json, OUT/gallery.tar and
# OUT/log.txt.
set -uo pipefail
O=${1:?usage: bash benchmarks/gpu/asset.sh OUT}
W=${WORK:-/tmp/mirage3d-gpu}; MESHES=${MESHES:-.carry/meshes/cars}; MODEL=${MODEL:-assets/models/car}
PARTS=${PARTS:-eval examples}; DEVICE=${DEVICE:-cuda}; STEPS=50; OBJECTS=5; VIEW_OBJECTS=6
if [ "${SMOKE:-0}" = 1 ]; then DEVICE=cpu; STEPS=2; OBJECTS=1; VIEW_OBJECTS=1; fi
mkdir -p "$W" "$O"
LOG="$O/log.txt"
stamp() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
if ! ls "$MODEL"/unet/*.safetensors > /dev/null 2>&1; then echo "error: $MODEL holds no UNet weights; carry the model or set MODEL" | tee -a "$LOG"; exit 1; fi
heldout() { [ -f "$W/heldout/config.json" ] || mirage3d data render "$MESHES" -o "$W/heldout" --n-per-mesh 4 --res 128 --orbits 16 --workers "$(nproc)" --seed 12345 >> "$LOG" 2>&1; }
wall() { python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }
{
  echo "# make-asset / views ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu), $(date +%F)), MODEL $MODEL"
  for part in $PARTS; do
    stamp "$part" >&2
    case "$part" in
      eval)
        heldout
        echo; echo "## make-asset end to end on $OBJECTS held-out objects (orbit frame 1 as input, $STEPS steps)"
        python3 benchmarks/eval_asset.py --collection "$W/heldout" --model "$MODEL" --out "$W/asset" --objects "$OBJECTS" --steps "$STEPS" --device "$DEVICE" | grep -E "^\|"
        cp "$W/asset/eval_asset.json" "$O/" ;;
      examples|serve)
        url=""
        if [ "$part" = serve ]; then
          s0=$(date +%s.%N)
          mirage3d serve --model "$MODEL" --device "$DEVICE" --port 8765 > "$W/serve.log" 2>&1 &
          until python3 -c "from mirage3d.serve import server_health; server_health('http://127.0.0.1:8765')" 2>/dev/null; do sleep 0.5; done
          echo; echo "server ready after $(wall "$s0") s (imports + model load)"
          url="--server http://127.0.0.1:8765"
        fi
        echo; echo "## make-asset on assets/examples ($STEPS steps, $part): wall time of each command"
        echo "| input | wall s |"; echo "|---|---|"
        for ex in sportscar basic_taxi suv; do
          s0=$(date +%s.%N)
          # shellcheck disable=SC2086
          mirage3d make-asset "assets/examples/$ex.png" -o "$W/$part-$ex.glb" --model "$MODEL" --steps "$STEPS" --device "$DEVICE" $url --overwrite >> "$LOG" 2>&1
          echo "| $ex | $(wall "$s0") |"
        done
        [ "$part" = serve ] && kill %1 2>/dev/null
        tar cf "$O/gallery.tar" -C "$W" $(cd "$W" && ls ./*-*.glb) 2>/dev/null ;;
      views)
        heldout
        echo; echo "## views fidelity on $VIEW_OBJECTS held-out orbits (benchmarks/eval_views.py, $STEPS steps)"
        python3 benchmarks/eval_views.py --model "$MODEL" --orbits-dir "$W/heldout/orbits" --input-frame 1 --steps "$STEPS" --max-objects "$VIEW_OBJECTS" --device "$DEVICE" --out "$W/ev" | grep -E "^\|"
        echo; echo "## views speed (benchmarks/bench_views.py, random weights)"
        python3 benchmarks/bench_views.py --views 8,16 --steps 25,50 --device "$DEVICE" --repeats 2 | grep -E "^\|" ;;
      imports)
        echo; echo "## import times (fresh interpreters)"
        python3 benchmarks/bench_imports.py --repeats 1 $([ "$DEVICE" = cuda ] && echo --cuda) | grep -E "^\|" ;;
      *) echo "unknown part $part (eval, examples, serve, views, imports)" ;;
    esac
  done
} 2>> "$LOG" | tee "$O/asset.md"
stamp done
