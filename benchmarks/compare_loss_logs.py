"""Loss logs of the 1-GPU and 2-GPU runs of ``bench_multigpu.sh`` side by side (the "same curve shape" check).

    python3 benchmarks/compare_loss_logs.py docs/figures/multi_gpu/loss_1gpu.jsonl docs/figures/multi_gpu/loss_2gpu.jsonl
Prints a table of the loss at each logged step of both runs and the largest relative gap at common steps.
"""

from __future__ import annotations

import argparse
import json


def load(path: str) -> dict[int, float]:
    with open(path) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("one", help="loss.jsonl of the 1-GPU run")
    ap.add_argument("two", help="loss.jsonl of the 2-GPU run")
    a = ap.parse_args()
    one, two = load(a.one), load(a.two)
    print("| step | loss, 1 GPU | loss, 2 GPUs |\n|---|---|---|")
    gaps = []
    for s in sorted(set(one) | set(two)):
        l1, l2 = one.get(s), two.get(s)
        print(f"| {s} | {'-' if l1 is None else f'{l1:.4f}'} | {'-' if l2 is None else f'{l2:.4f}'} |")
        if l1 is not None and l2 is not None:
            gaps.append(abs(l1 - l2) / l1)
    print(f"largest relative gap at common steps: {max(gaps):.1%}")


if __name__ == "__main__":
    main()
