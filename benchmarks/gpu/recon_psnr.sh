#!/usr/bin/env bash
# Held-out PSNR of recon's GLB on the GPU machine (docs/recon.md, "Held-out PSNR"), in one call of about 4 minutes:
#   source scripts/device_env.sh && bash benchmarks/gpu/recon_psnr.sh OUT
# Renders 32-view orbits (128²) of the first LIMIT (default 3) shared cars (.carry/meshes/cars and
# .carry/meshes/cars-more) on the device, then:
#   exact.md    bench_recon.py, 16 and 8 exact views, defaults, after one untimed warm-up ("total s" = GPU time
#               of views in memory → GLB);
#   lifted.md   the same with --set fair_keep_outline=False (the membrane as before: outlines lifted);
#   perturb_True.md / perturb_False.md  16 views, cameras az10+3, refinement on, outlines kept / lifted;
#   split.md    recon_psnr_split.py: where the held-out error lies (core / edge / outline) and what the same
#               texture step reaches on the true mesh;
#   summary.md  the per-setting means.
# Environment: LIMIT, W (scratch, default /tmp/recon_psnr), SMOKE=1 (a tiny CPU check of this script: 1 car,
# 64² orbits, few steps; the numbers mean nothing).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu/recon_psnr.sh OUT}
W=${W:-/tmp/recon_psnr}
LIMIT=${LIMIT:-3}
DEV=cuda RES=128 SET="" T=150
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu LIMIT=1 RES=64 T=900
  SET="--set iters=8 pose_iters=8 res=32 faces=2000 texture_size=128"
fi
MESHES=()
for m in .carry/meshes/cars .carry/meshes/cars-more; do [ -d "$m" ] && MESHES+=("$m"); done
if [ ${#MESHES[@]} = 0 ]; then for m in ../shared/meshes/cars ../shared/meshes/cars-more; do [ -d "$m" ] && MESHES+=("$m"); done; fi
mkdir -p "$OUT" "$W"
LOG="$OUT/log.txt"
: > "$LOG"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$LOG"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$LOG" 2>/dev/null
say "render orbits (first $LIMIT cars, 32 views, ${RES}²)"
timeout 60 python3 - "$W/coll" "$LIMIT" "$RES" "${MESHES[@]}" >> "$LOG" 2>&1 <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_recon import make_collection
out, limit, res, meshes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), [Path(m) for m in sys.argv[4:]]
make_collection(meshes, out, 32, res, limit)
PY
C="$W/coll/collection"
say "bench exact"
timeout "$T" python3 benchmarks/bench_recon.py --device "$DEV" --out "$W/exact" --collection "$C" --views 16 8 --warmup $SET > "$OUT/exact.md" 2> "$W/exact.err" || { say "exact exit $?"; tail -5 "$W/exact.err" >> "$LOG"; }
say "bench lifted"
# shellcheck disable=SC2086
timeout "$T" python3 benchmarks/bench_recon.py --device "$DEV" --out "$W/lifted" --collection "$C" --views 16 8 --warmup ${SET:---set} fair_keep_outline=False > "$OUT/lifted.md" 2> "$W/lifted.err" || { say "lifted exit $?"; tail -5 "$W/lifted.err" >> "$LOG"; }
for k in True False; do
  say "bench az10+3, refinement on, fair_keep_outline=$k"
  # shellcheck disable=SC2086
  timeout "$T" python3 benchmarks/bench_recon.py --device "$DEV" --out "$W/perturb_$k" --collection "$C" --views 16 --perturb az10+3 --refine on ${SET:---set} fair_keep_outline=$k > "$OUT/perturb_$k.md" 2> "$W/perturb_$k.err" || { say "perturb exit $?"; tail -5 "$W/perturb_$k.err" >> "$LOG"; }
done
say "split"
timeout "$T" python3 benchmarks/recon_psnr_split.py --device "$DEV" --out "$W/split" --collection "$C" --limit "$LIMIT" $SET > "$OUT/split.md" 2> "$W/split.err" || { say "split exit $?"; tail -5 "$W/split.err" >> "$LOG"; }
{
  echo "# recon held-out PSNR on the GPU machine, $(date +%F)"
  for t in exact lifted perturb_True perturb_False; do
    echo; echo "## $t"; grep -E "^(machine|date)" "$OUT/$t.md"
    awk '/^means per setting/{f=1} f' "$OUT/$t.md"
  done
  echo; echo "## split"; cat "$OUT/split.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
say "done"
