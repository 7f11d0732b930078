"""Pose discovery quality through the real CLI: ARI / NMI / median azimuth error per setting, collection and seed.

    python3 benchmarks/bench_poses.py --collection C [--collection C2 ...] --backbone MODEL --out OUT \
        [--setting "defaults=" --setting "old defaults=--timestep 100 --w-facing 0 --w-front 0" \
         --setting "HOG=--backbone hog"] [--seeds 0-3] [--device cpu]

Every run is ``mirage3d poses discover C -o OUT/<collection>/<setting>/seed<S> --backbone MODEL --seed S
--device D --overwrite SETTING-ARGS`` followed by ``mirage3d eval poses``: the real commands, invoked in this
one process (so the wall time of a discovery excludes Python's start-up and imports, which a fresh command
pays once). A setting's arguments come last, so they can replace ``--backbone``. Features are extracted into the
collection's default cache (``C/.cache/features/<hash of backbone and flip>``), so settings and seeds that
read the same backbone share one extraction. Prints a Markdown table of every run, then one row per setting
and collection (mean ± sd over seeds); writes ``OUT/bench_poses.json``. C must hold ``ground_truth.jsonl``
(``mirage3d data render``). Without --setting, the defaults alone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from pathlib import Path

from typer.testing import CliRunner

from mirage3d.cli.main import app


def seeds(text: str) -> list[int]:
    """ "0-3" or "0,2,5" → list of ints."""
    if "-" in text and "," not in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",") if x.strip()]


def cli(*args: str):
    """Run ``mirage3d ARGS`` (exit_code, output)."""
    return CliRunner().invoke(app, list(args))


def _last(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip() and "MIRAGE3D_DEBUG" not in line]
    return lines[-1] if lines else "(no output)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", required=True, type=Path, action="append", help="rendered collection (repeat for several)")
    ap.add_argument("--backbone", required=True, help="backbone of every setting unless it gives its own (a model folder, hog, ...)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--setting", action="append", default=None, help='NAME=ARGS: extra `poses discover` arguments (repeat); default "defaults="')
    ap.add_argument("--seeds", default="0", help="discovery seeds: 0-3 or 0,1,5")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    settings = [s.split("=", 1) for s in (args.setting or ["defaults="])]
    rows = []
    print("| setting | collection | seed | ARI | NMI | median az err (deg) | within 45 deg | discover wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for coll in args.collection:
        for name, extra in settings:
            for seed in seeds(args.seeds):
                out = args.out / coll.name / name.replace(" ", "_") / f"seed{seed}"
                t0 = time.perf_counter()
                r = cli(
                    "poses",
                    "discover",
                    str(coll),
                    "-o",
                    str(out),
                    "--backbone",
                    args.backbone,
                    "--seed",
                    str(seed),
                    "--device",
                    args.device,
                    "--overwrite",
                    *shlex.split(extra),
                )
                wall = time.perf_counter() - t0
                if r.exit_code != 0:
                    print(f"| {name} | {coll.name} | {seed} | failed: {_last(r.output)} | | | | |", flush=True)
                    continue
                e = cli("eval", "poses", str(out), "--collection", str(coll))
                if e.exit_code != 0:
                    print(f"| {name} | {coll.name} | {seed} | eval failed: {_last(e.output)} | | | | |", flush=True)
                    continue
                m = json.loads((out / "eval.json").read_text())
                rows.append({"setting": name, "args": extra, "collection": str(coll), "seed": seed, "discover_wall_s": wall, **m})
                print(
                    f"| {name} | {coll.name} | {seed} | {m['ari']:.3f} | {m['nmi']:.3f} | {m['median_error_deg']:.1f} | {100 * m['within_45_deg']:.0f}% | {wall:.0f} |",
                    flush=True,
                )
    print()
    print("| setting | collection | runs | ARI mean ± sd | runs with ARI >= 0.6 | NMI mean | median az err, range (deg) |")
    print("|---|---|---|---|---|---|---|")
    for coll in args.collection:
        for name, _ in settings:
            rs = [r for r in rows if r["setting"] == name and r["collection"] == str(coll)]
            if not rs:
                continue
            ari = [r["ari"] for r in rs]
            sd = statistics.stdev(ari) if len(ari) > 1 else 0.0
            err = [r["median_error_deg"] for r in rs]
            print(
                f"| {name} | {coll.name} | {len(rs)} | {statistics.mean(ari):.3f} ± {sd:.3f} | {sum(a >= 0.6 for a in ari)}/{len(rs)} | "
                f"{statistics.mean(r['nmi'] for r in rs):.3f} | {min(err):.1f}-{max(err):.1f} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_poses.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
