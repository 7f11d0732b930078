"""Is the car's facing direction (front vs back) in the features, and can it be found without labels?

    python3 benchmarks/pose_direction_probe.py FEATURES POSES COLLECTION

FEATURES is a feature cache (`mirage3d features extract`, with flips), POSES a `mirage3d poses discover` folder
made from it, COLLECTION the rendered collection (ground_truth.jsonl). Discovered poses hold pairs of views
180° apart (`benchmarks/pose_confusion.py`); this measures three ways of telling the two apart. Summary
features per image: unit patch features inside the foreground, average-pooled over the object's bounding box
on a G x G grid ("box G"), or over the whole image ("global").

1. Unsupervised split: 2-means inside each pose; accuracy against the truth "nearer the pose's main peak or
   the peak 180° away" (best of the two labellings; 0.5 = chance).
2. Linear probe (uses the truth, an upper bound): 4-fold logistic regression on the same split.
3. Flip difference: the top principal component of b(x) - b(flip x) as a facing score; accuracy of its sign
   against sign(sin azimuth) (which way the front points in the image) for views more than ~22° from front/back.
4. Mirror-pair contrast: for each pair of mirror poses (k, m[k]) with k != m[k], the direction
   w_k = mean(b(x) - b(flip x) | pose k) - mean(same | pose m[k]) (what tells a pose from its mirror, where the
   car faces the other way); the pairs' directions are signed to agree with each other (best of all sign
   choices by summed cosine), summed, and the facing score is (b(x) - b(flip x)) . w; then 3 rounds of
   self-training (logistic regression on the score's signs, flips labelled opposite). Same accuracy as 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage3d.cameras import circular_difference  # noqa: E402
from mirage3d.poses.evaluate import read_ground_truth  # noqa: E402
from mirage3d.poses.extract import FeatureCache  # noqa: E402
from mirage3d.poses.facing import box_pool  # noqa: E402  (the pooling the facing score uses)
from mirage3d.poses.parts import fit_pca, kmeans  # noqa: E402


def mirror_pair_facing(b: torch.Tensor, bf: torch.Tensor, labels: np.ndarray, mirror: np.ndarray, sin: np.ndarray, keep: np.ndarray) -> float:
    """Accuracy of the mirror-pair-contrast facing score (method 4 of the module docstring)."""
    import itertools

    from sklearn.linear_model import LogisticRegression

    c = (b - bf).double().cpu().numpy()
    lab = labels
    dirs = []
    for k in range(len(mirror)):
        j = int(mirror[k])
        if k < j and (lab == k).any() and (lab == j).any():
            dirs.append(c[lab == k].mean(0) - c[lab == j].mean(0))
    if not dirs:
        return float("nan")
    d = np.stack(dirs)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
    cos = d @ d.T
    best = max(itertools.product([1, -1], repeat=len(d) - 1), key=lambda sg: (np.array((1, *sg)) @ cos @ np.array((1, *sg))))
    w = np.array((1, *best)) @ d
    score = c @ w
    x = np.concatenate([b.double().cpu().numpy(), bf.double().cpu().numpy()])
    for _ in range(3):  # self-training: the images and their flips, labelled by the score's sign (flips opposite)
        y = np.concatenate([score > 0, score <= 0]).astype(int)
        clf = LogisticRegression(max_iter=2000).fit(x, y)
        score = clf.decision_function(b.double().cpu().numpy()) - clf.decision_function(bf.double().cpu().numpy())
    acc = float((np.sign(score[keep]) == np.sign(sin[keep])).mean())
    return max(acc, 1 - acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", type=Path)
    ap.add_argument("poses", type=Path)
    ap.add_argument("collection", type=Path)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    cache = FeatureCache.open(a.features)
    p = json.loads((a.poses / "poses.json").read_text())
    gt = read_ground_truth(a.collection)
    true = np.array([gt[f] for f in p["files"]])
    labels = np.array(p["labels"])
    summaries: dict[str, list[torch.Tensor]] = {"global": [], "box 2": [], "box 4": []}
    flips: dict[str, list[torch.Tensor]] = {"box 2": [], "box 4": []}
    for _, d in cache.iter_shards():
        fg = d["fg"].to(a.device).float()
        feats = d["feats"].to(a.device)
        u = F.normalize(feats.float(), dim=-1) * (fg >= 0.5)[..., None]
        summaries["global"].append(u.mean(dim=(1, 2)))
        for g in (2, 4):
            summaries[f"box {g}"].append(box_pool(feats, fg, g))
            if "feats_flip" in d:
                flips[f"box {g}"].append(box_pool(d["feats_flip"].to(a.device), fg.flip(-1), g))
    s = {k: torch.cat(v) for k, v in summaries.items()}

    print("| summary | unsupervised 2-means split | linear probe (labels used) | flip-difference facing accuracy | mirror-pair facing accuracy |")
    print("|---|---|---|---|---|")
    for name, x_all in s.items():
        un, lin, n_un, n_lin = 0.0, 0.0, 0, 0
        for k in range(int(p["num_poses"])):
            idx = np.flatnonzero(labels == k)
            hist = np.bincount(np.mod(np.round(true[idx] / 45.0).astype(int), 8), minlength=8)
            peak = int(np.argmax(hist)) * 45
            side = (np.abs(circular_difference(true[idx], peak + 180)) < np.abs(circular_difference(true[idx], peak))).astype(int)
            x = x_all[idx] - x_all[idx].mean(0)
            mean, comps = fit_pca(x, 32)
            _, lab, _ = kmeans((x - mean) @ comps, 2, seed=0, n_init=4)
            lab = lab.cpu().numpy()
            un += max((lab == side).mean(), (lab != side).mean()) * len(idx)
            n_un += len(idx)
            if min(side.sum(), len(side) - side.sum()) >= 8:
                X = x_all[idx].cpu().numpy()
                lin += cross_val_score(LogisticRegression(max_iter=2000), X, side, cv=4).mean() * len(idx)
                n_lin += len(idx)
        facing = "-"
        if name in flips and flips[name]:
            c = s[name] - torch.cat(flips[name])
            _, comps = fit_pca(torch.cat([c, -c]), 1)
            score = (c @ comps[:, 0]).cpu().numpy()
            sin = np.sin(np.deg2rad(true))
            keep = np.abs(sin) > 0.38
            acc = float((np.sign(score[keep]) == np.sign(sin[keep])).mean())
            facing = f"{max(acc, 1 - acc):.2f}"
            _, comps10 = fit_pca(torch.cat([c, -c]), 10)
            per_pc = []
            for j in range(comps10.shape[1]):
                sc = (c @ comps10[:, j]).cpu().numpy()
                aj = float((np.sign(sc[keep]) == np.sign(sin[keep])).mean())
                per_pc.append(max(aj, 1 - aj))
            print(f"  {name}: facing accuracy of the flip difference's top 10 principal components: " + ", ".join(f"{x:.2f}" for x in per_pc))
            cn = c.cpu().numpy()
            sup = cross_val_score(LogisticRegression(max_iter=2000), cn[keep], (sin[keep] > 0).astype(int), cv=4).mean()
            print(f"  {name}: facing from the flip difference with a linear probe (uses the truth): {sup:.2f}")
            pair_acc = mirror_pair_facing(s[name], torch.cat(flips[name]), labels, np.asarray(p["mirror"]), sin, keep)
            facing += f" | {pair_acc:.2f}"
        else:
            facing += " | -"
        print(f"| {name} | {un / n_un:.2f} | {lin / max(n_lin, 1):.2f} | {facing} |")


if __name__ == "__main__":
    main()
