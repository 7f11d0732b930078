#!/usr/bin/env bash
# Reconstruction figures of docs/recon.md on the GPU machine, in one call of < 9 minutes (LIMIT=3: about 7):
#   source scripts/device_env.sh && bash benchmarks/gpu/recon.sh OUT
# (carry .whl, .gl and .carry/meshes; the recon needs no diffusers, so when the tree is too large to travel,
# carry a copy of .whl without the diffusers wheel under another name and rename it to .whl on the device)
# Renders 32-view orbits (128²) of the shared cars (.carry/meshes/cars and .carry/meshes/cars-more, LIMIT
# of them, default 4; the perturbation rows use the first 3) on the device, then benchmarks/bench_recon.py (16 or 8 of the 32 views for training,
# the views half-way between them held out):
#   exact.md    16 and 8 exact views, refinement off and on, after one untimed warm-up reconstruction
#               (the 16-view rows' "total s" is the GPU time of views in memory → GLB);
#   perturb.md  16 views with camera errors: az10+3 (azimuth ±10° + 3° about a random axis, about the object),
#               deg5 (5° about the camera centre + a shift), az20 (azimuth ±20°), refinement off and on;
#   res256.md   16 views rendered at 256² (texture 1024²), one car, refinement off;
#   turntable.png / turntable.gif  the textured GLB of the first car from 16 exact views (unlit);
#   summary.md  the per-setting means of the three tables.
# Each step has a timeout (the whole script stays under 9 minutes; a step cut short keeps its rows so far).
# Environment: LIMIT (cars), W (scratch, default /tmp/recon_gpu), SMOKE=1 (a tiny CPU check of this script:
# 1 car, 32-view orbits at 64², few steps; the numbers mean nothing).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu/recon.sh OUT}
W=${W:-/tmp/recon_gpu}
LIMIT=${LIMIT:-4}
DEV=cuda ORBITS=32 RES=128 SET="" T1=170 T2=280 T3=50
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu LIMIT=1 ORBITS=32 RES=64 T1=900 T2=900 T3=900
  SET="--set iters=8 pose_iters=8 res=32 faces=2000 texture_size=128"
fi
MESHES=()
for m in .carry/meshes/cars .carry/meshes/cars-more; do [ -d "$m" ] && MESHES+=("$m"); done
if [ ${#MESHES[@]} = 0 ]; then MESHES=(../shared/meshes/cars ../shared/meshes/cars-more); fi
mkdir -p "$OUT" "$W"
LOG="$OUT/log.txt"
: > "$LOG"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$LOG"; }
bench() {  # NAME SECONDS ARGS...: one bench_recon call, its table into OUT/NAME.md, its stderr tail into the log
  local name=$1 secs=$2; shift 2
  say "bench $name"
  timeout "$secs" python3 benchmarks/bench_recon.py --device "$DEV" --out "$W/$name" "$@" $SET > "$OUT/$name.md" 2> "$W/$name.err"
  local rc=$?
  [ $rc = 0 ] || { say "bench $name exit $rc"; tail -5 "$W/$name.err" >> "$LOG"; }
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$LOG" 2>/dev/null
say "render orbits of ${MESHES[*]} (first $LIMIT cars, $ORBITS views, ${RES}²)"
timeout 60 python3 - "$W/coll" "$LIMIT" "$ORBITS" "$RES" "${MESHES[@]}" >> "$LOG" 2>&1 <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_recon import make_collection
out, limit, orbits, res, meshes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), [Path(m) for m in sys.argv[5:]]
make_collection(meshes, out, orbits, res, limit)
make_collection(meshes, out / "hi", orbits, 2 * res, 1)
PY
C="$W/coll/collection"
bench exact "$T1" --collection "$C" --views 16 8 --perturb none --refine off on --warmup
bench perturb "$T2" --collection "$C" --views 16 --perturb az10+3 deg5 az20 --refine off on --limit 3
if [ "${SMOKE:-0}" = 1 ]; then bench res256 "$T3" --collection "$W/coll/hi/collection" --views 16 --limit 1
else bench res256 "$T3" --collection "$W/coll/hi/collection" --views 16 --limit 1 --set texture_size=1024; fi

say "turntable"
timeout 50 python3 - "$C" "$OUT" "$DEV" "${SMOKE:-0}" >> "$LOG" 2>&1 <<'PY'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from bench_recon import split
from mirage3d.recon import ReconConfig, load_views, reconstruct
coll, out, dev, smoke = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
orbit = sorted(p for p in (coll / "orbits").iterdir() if (p / "transforms.json").exists())[0]
views = load_views(orbit)
train, _ = split(views.n, 16)
cfg = ReconConfig(device=dev, preview=True, **(dict(iters=8, res=32, faces=2000, texture_size=128) if smoke else {}))
res = reconstruct(views.subset(train), out / "work" / f"{orbit.name}.glb", cfg)
shutil.move(out / "work" / f"{orbit.name}.preview.png", out / "turntable.png")
shutil.move(out / "work" / f"{orbit.name}.preview.gif", out / "turntable.gif")
shutil.rmtree(out / "work")
print(f"turntable of {orbit.name}: {res.timings}")
PY

say "summary"
{
  echo "# recon on the GPU machine, $(date +%F)"
  for t in exact perturb res256; do
    echo; echo "## $t"; grep -E "^(machine|date)" "$OUT/$t.md"
    if grep -q "^means per setting" "$OUT/$t.md"; then awk '/^means per setting/{f=1} f' "$OUT/$t.md"
    else echo "(timed out before the means; rows so far:)"; grep -E "^\| " "$OUT/$t.md"; fi
  done
} > "$OUT/summary.md"
cat "$OUT/summary.md"
say "done"
