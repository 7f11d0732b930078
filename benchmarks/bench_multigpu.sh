#!/usr/bin/env bash
# Multi-GPU check on a 2-GPU machine (offline device: `source scripts/device_env.sh` first):
#   benchmarks/bench_multigpu.sh WORK OUTDIR
# 1. `mirage3d train` on 1 GPU vs `accelerate launch --num_processes 2` (same per-GPU batch, eager): img/s and
#    scaling efficiency = img/s(2) / (2 · img/s(1)); loss logs of both for the curve shape; the 2-GPU run is
#    stopped at step 60 and resumed to 120 by the same command (checkpoint/resume across processes).
# 2. Feature extraction for pose discovery on 1 GPU vs 2 (accelerate): shards compared byte for byte.
# 3. With BENCH_TRAIN=1, GPU 1 meanwhile runs the single-GPU training-throughput benchmark (plain diffusers loop vs
#    ours). Every stage prints a timestamp so a cut-off call still shows how far it got.
set -uo pipefail
W=$1; O=$2; MESHES=${MESHES:-../shared/meshes/cars}; MODEL=${MODEL:-assets/models/car}
mkdir -p "$W" "$O"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$O/gpus.txt"
stamp() { echo "[$(date +%T)] $*"; }
[ "${BENCH_TRAIN:-0}" = 1 ] && (CUDA_VISIBLE_DEVICES=1 timeout 200 python3 benchmarks/bench_train.py --out "$W/bt" --steps 40 --warmup 10 2>&1 | grep -E "^\|" > "$O/bench_train.md") &
stamp render; [ -f "$W/cars/config.json" ] || mirage3d data render "$MESHES" -o "$W/cars" --n-per-mesh 400 --res 128 --workers 24 --seed 0 > /dev/null
TRAIN=(--batch-size 128 --checkpoint-every 60 --sample-every 0 --sample-steps 10 --seed 0)
stamp train-1gpu; CUDA_VISIBLE_DEVICES=0 mirage3d train "$W/cars" -o "$W/m1" --max-steps 120 "${TRAIN[@]}" 2>&1 | tail -2
stamp features-1gpu; CUDA_VISIBLE_DEVICES=0 mirage3d features extract "$W/cars" -o "$W/f1" --backbone "$MODEL" --timestep 200 --workers 8 2>&1 | tail -1
wait
stamp train-2gpu-to-60; accelerate launch --num_processes 2 --multi_gpu -m mirage3d.cli train "$W/cars" -o "$W/m2" --max-steps 60 "${TRAIN[@]}" 2>&1 | tail -2
stamp train-2gpu-resume-to-120; accelerate launch --num_processes 2 --multi_gpu -m mirage3d.cli train "$W/cars" -o "$W/m2" --max-steps 120 "${TRAIN[@]}" 2>&1 | tail -3
stamp features-2gpu; accelerate launch --num_processes 2 --multi_gpu -m mirage3d.cli features extract "$W/cars" -o "$W/f2" --backbone "$MODEL" --timestep 200 --workers 8 2>&1 | tail -1
stamp compare; same=1; for f in "$W"/f1/*.safetensors; do cmp -s "$f" "$W/f2/$(basename "$f")" || { same=0; echo "differs: $(basename "$f")"; }; done
echo "feature shards identical (1 vs 2 GPUs): $same ($(ls "$W"/f1/*.safetensors | wc -l) shards)" | tee "$O/features.txt"
cp "$W/m1/loss.jsonl" "$O/loss_1gpu.jsonl"; cp "$W/m2/loss.jsonl" "$O/loss_2gpu.jsonl"
python3 - "$W/m1/loss.jsonl" "$W/m2/loss.jsonl" <<'PY' | tee "$O/scaling.md"
import json, sys
def rate(p, lo):  # median img/s over logged windows after step `lo` (skips warm-up)
    r = sorted(x["img_per_s"] for x in map(json.loads, open(p)) if x["step"] > lo)
    return r[len(r) // 2]
one, two = rate(sys.argv[1], 40), rate(sys.argv[2], 80)
print("| GPUs | img/s | scaling efficiency |\n|---|---|---|")
print(f"| 1 | {one:.0f} | - |\n| 2 | {two:.0f} | {two / (2 * one):.2f} |")
PY
