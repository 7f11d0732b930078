"""Ordering the discovered poses around the object and giving each an azimuth.

1. **Ring**: the cyclic order of the K pose centres that minimises the summed distance between neighbours
   (a closed travelling-salesman tour), on the mirror-symmetrised distance
   D'[a, b] = (D[a, b] + D[m[a], m[b]]) / 2 (the mirrored ring is then exactly as good as the ring).
   Exact (Held-Karp) for K ≤ 12, nearest-neighbour + 2-opt beyond.
2. **Spacing**: uniform (360/K per pose) or arcs proportional to cluster sizes.
3. **Mirror axis**: the flip maps azimuth φ to −φ, so the mirror map m must act on the ring as a
   reflection. We pick the reflection axis α that best sends each pose's angle θ_k to θ_{m[k]}
   (least squares of the circular residual), and put azimuth 0 on that axis: φ_k = θ_k − α.
   Which end of the axis is the front (0°) and which the back (180°), and whether the ring runs
   counter-clockwise, cannot be known without labels (the object's own symmetry); see docs/poses.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mirage3d.cameras import circular_difference, wrap_azimuth

MAX_EXACT_RING = 12


def tour_length(order: list[int], dist: np.ndarray) -> float:
    return float(sum(dist[order[i], order[(i + 1) % len(order)]] for i in range(len(order))))


def _held_karp(dist: np.ndarray) -> list[int]:
    k = dist.shape[0]
    full = 1 << (k - 1)  # subsets of nodes 1..k-1
    dp = np.full((full, k), np.inf)
    parent = np.full((full, k), -1, dtype=np.int64)
    for j in range(1, k):
        dp[1 << (j - 1), j] = dist[0, j]
    for mask in range(1, full):
        for j in range(1, k):
            bit = 1 << (j - 1)
            if not mask & bit or not np.isfinite(dp[mask, j]):
                continue
            for n in range(1, k):
                nb = 1 << (n - 1)
                if mask & nb:
                    continue
                c = dp[mask, j] + dist[j, n]
                if c < dp[mask | nb, n]:
                    dp[mask | nb, n] = c
                    parent[mask | nb, n] = j
    last = int(np.argmin(dp[full - 1, 1:] + dist[1:, 0])) + 1
    order, mask = [last], full - 1
    while True:
        prev = int(parent[mask, order[-1]])
        mask &= ~(1 << (order[-1] - 1))
        if prev < 0:
            break
        order.append(prev)
    return [0, *order[::-1]]


def _two_opt(dist: np.ndarray) -> list[int]:
    k = dist.shape[0]
    order, left = [0], set(range(1, k))
    while left:  # nearest neighbour
        nxt = min(left, key=lambda j: dist[order[-1], j])
        order.append(nxt)
        left.remove(nxt)
    improved = True
    while improved:
        improved = False
        for i in range(1, k - 1):
            for j in range(i + 1, k):
                a, b, c, d = order[i - 1], order[i], order[j], order[(j + 1) % k]
                if dist[a, c] + dist[b, d] < dist[a, b] + dist[c, d] - 1e-12:
                    order[i : j + 1] = order[i : j + 1][::-1]
                    improved = True
    return order


def cyclic_order(dist: np.ndarray) -> list[int]:
    """Ring order of K nodes (starting at node 0) minimising the closed tour length of ``dist`` (K, K)."""
    dist = np.asarray(dist, dtype=np.float64)
    k = dist.shape[0]
    if k <= 3:
        return list(range(k))
    order = _held_karp(dist) if k <= MAX_EXACT_RING else _two_opt(dist)
    if order[1] > order[-1]:  # canonical direction, so results do not depend on float ties
        order = [order[0], *order[1:][::-1]]
    return order


@dataclass
class Ring:
    order: list[int]  # poses in ring order
    azimuth_deg: np.ndarray  # (K,) per pose (indexed by pose, not ring position)
    axis_deg: float  # reflection axis α of the ring angles (azimuth 0 sits there)
    mirror_residual_deg: float  # RMS circular residual of the mirror map after alignment


def mirror_axis(theta: np.ndarray, mirror: np.ndarray, step_deg: float = 0.25) -> tuple[float, float]:
    """Axis α in [0, 180) minimising Σ_k circ(θ_{m[k]} − (2α − θ_k))²; returns (α, RMS residual in degrees)."""
    alphas = np.arange(0.0, 180.0, step_deg)  # (A,)
    pred = 2 * alphas[:, None] - theta[None, :]  # (A, K) where the mirror of pose k should sit
    res = circular_difference(pred, theta[mirror][None, :])
    cost = (res**2).mean(1)
    i = int(np.argmin(cost))
    return float(alphas[i]), float(np.sqrt(cost[i]))


def score_order(labels: np.ndarray, facing: np.ndarray, front: np.ndarray, k: int) -> list[int]:
    """Cyclic order of ``k`` poses by the angle atan2(mean facing, mean front) of their images.

    The facing score follows sin φ (which way the object points) and the front/back score cos φ (which end is
    seen), each up to scale and sign, so the angle of a pose's mean (facing, front), each standardised, runs
    around the ring; a sign flip of either score reflects the ring, which the symmetry allows. Used instead of
    the centre distances when both scores exist: on car renders the distance tour misplaced whole poses
    (median error 31-38° against 12-19°, docs/poses.md).
    """
    s = np.asarray(facing, dtype=np.float64) / max(float(np.std(facing)), 1e-12)
    r = np.asarray(front, dtype=np.float64) / max(float(np.std(front)), 1e-12)
    counts = np.bincount(labels, minlength=k)
    ms = np.bincount(labels, weights=s, minlength=k) / np.maximum(counts, 1)
    mr = np.bincount(labels, weights=r, minlength=k) / np.maximum(counts, 1)
    return [int(i) for i in np.argsort(np.arctan2(ms, mr), kind="stable")]


def ring_azimuths(centre_dist: np.ndarray, mirror: np.ndarray, sizes: np.ndarray | None = None, order: list[int] | None = None) -> Ring:
    """Azimuth per pose from the distances between pose centres (K, K), the mirror map and cluster sizes.

    ``sizes`` None: uniform spacing; else arcs proportional to the sizes. ``order``: the cyclic order of the
    poses when known otherwise (e.g. :func:`score_order`); None = the shortest tour of the centre distances.
    """
    k = centre_dist.shape[0]
    mirror = np.asarray(mirror)
    if order is None:
        sym = 0.5 * (centre_dist + centre_dist[np.ix_(mirror, mirror)])
        order = cyclic_order(sym)
    elif sorted(order) != list(range(k)):
        raise ValueError(f"order must be a permutation of the {k} poses, got {order}")
    if sizes is None:
        arcs = np.full(k, 360.0 / k)
    else:
        s = np.asarray(sizes, dtype=np.float64)[order]
        arcs = 360.0 * np.maximum(s, 1e-9) / np.maximum(s, 1e-9).sum()
    theta_ring = np.cumsum(arcs) - arcs / 2 - arcs[0] / 2  # (K,) angles in ring order, first pose at 0
    theta = np.empty(k)
    theta[order] = theta_ring
    alpha, resid = mirror_axis(theta, mirror)
    az = np.asarray(wrap_azimuth(theta - alpha), dtype=np.float64)
    return Ring(order, az, alpha, resid)
