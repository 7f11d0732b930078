"""Where the start-up time of ``mirage3d make-asset`` goes: Python imports, each group in a fresh process.

    python3 benchmarks/bench_imports.py [--repeats 3] [--cuda]

Prints a markdown table: the import's wall time, its user and system CPU seconds (the interpreter's own
start-up subtracted) and the whole process's wall time, best of N fresh interpreters. Wall well above user + system means the time
is spent waiting on the disk rather than running Python, which decides whether importing in parallel
threads can help. The last rows import the make-asset set serially and in two threads (torch and
diffusers in one, the mesh libraries in the other).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

GROUPS: dict[str, str] = {
    "python start-up (subtracted from the rest)": "pass",
    "torch": "import torch",
    "torch + CUDA context": "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()",
    "torch._dynamo (diffusers imports it)": "import torch._dynamo",
    "diffusers UNet2DModel": "from diffusers import UNet2DModel",
    "diffusers DiffusionPipeline": "from diffusers import DiffusionPipeline",
    "transformers": "import transformers",
    "scipy.ndimage": "import scipy.ndimage",
    "trimesh, xatlas, mcubes": "import trimesh, xatlas, mcubes",
    # (mirage3d.recon imports its modules on first use: the pipeline module is what make-asset loads)
    "make-asset set (mirage3d.diffusion.views + mirage3d.recon)": "import mirage3d.diffusion.views, mirage3d.recon.pipeline",
    "make-asset set, mesh libraries in a second thread": (
        "import threading\nt = threading.Thread(target=lambda: __import__('mirage3d.recon.pipeline'))\nt.start(); import mirage3d.diffusion.views; t.join()"
    ),
}

PROBE = """
import resource, time
t0 = time.perf_counter()
exec(compile({code!r}, "<probe>", "exec"))
r = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT", {{"wall": time.perf_counter() - t0, "user": r.ru_utime, "sys": r.ru_stime}})
"""


def measure(code: str) -> dict[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True, check=True).stdout
    process = time.perf_counter() - t0
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :].replace("'", '"')), "process": process}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cuda", action="store_true", help="also time the CUDA context")
    args = ap.parse_args()
    print("| import | import wall s | user s | sys s | whole process wall s |")
    print("|---|---|---|---|---|")
    base = None
    for name, code in GROUPS.items():
        if "cuda" in code and not args.cuda:
            continue
        runs = [measure(code) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["wall"])
        if base is None:
            base = best
            print(f"| {name} | {best['wall']:.2f} | {best['user']:.2f} | {best['sys']:.2f} | {best['process']:.2f} |")
            continue
        print(f"| {name} | {best['wall']:.2f} | {best['user'] - base['user']:.2f} | {best['sys'] - base['sys']:.2f} | {best['process']:.2f} |")


if __name__ == "__main__":
    main()
