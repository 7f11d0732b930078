"""Mirror-consistent k-means of pose descriptors.

Every image i gives two descriptors: d_i of the image and f_i of its horizontal flip. The flip of a view
from azimuth φ is the view from −φ, so if image i has pose k its flip must have the mirror pose m[k], with
m an involution (m[m[k]] = k; m[k] = k for views on the symmetry plane, e.g. front and back). We minimise

    J(l, c, m) = Σ_i ‖d_i − c_{l_i}‖² + ‖f_i − c_{m[l_i]}‖²

by alternating over labels l (each image with its flip, jointly), centres c (mean of the images of pose k;
optionally also of the flips of the images of pose m[k], which makes it exact coordinate descent on J),
and the mirror map m (best involution, exact by dynamic
programming for K ≤ 16); at most ``iters`` rounds. Initialisation: plain k-means
of all 2N descriptors or of the N image descriptors (alternating over restarts), with m from how the
flips of each cluster's members fall.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from mirage3d.errors import InputError
from mirage3d.poses.parts import kmeans

MAX_EXACT_INVOLUTION = 16


def best_involution(w: np.ndarray, max_fixed: int | None = None) -> np.ndarray:
    """Involution m maximising Σ_k w[k, m[k]] (w (K, K)); exact for K ≤ 16, greedy pairing beyond.

    ``max_fixed``: at most this many poses may be their own mirror (m[k] = k). On a ring of poses around a
    left/right-symmetric object only the views on the symmetry plane (front and back) are: 2 at most.
    """
    w = np.asarray(w, dtype=np.float64)
    k = w.shape[0]
    if max_fixed is not None and max_fixed < k:
        return _best_involution_limited(w, max(0, int(max_fixed)))
    pair = w + w.T
    if k > MAX_EXACT_INVOLUTION:
        m = np.arange(k)
        free = set(range(k))
        gains = sorted(((pair[i, j] - w[i, i] - w[j, j], i, j) for i in range(k) for j in range(i + 1, k)), reverse=True)
        for g, i, j in gains:
            if g > 0 and i in free and j in free:
                m[i], m[j] = j, i
                free -= {i, j}
        return m

    @cache
    def best(mask: int) -> tuple[float, tuple[tuple[int, int], ...]]:
        if mask == 0:
            return 0.0, ()
        i = (mask & -mask).bit_length() - 1  # lowest unassigned pose
        rest = mask & ~(1 << i)
        score, pairs = best(rest)
        out = (score + w[i, i], pairs + ((i, i),))
        j_mask = rest
        while j_mask:
            j = (j_mask & -j_mask).bit_length() - 1
            j_mask &= j_mask - 1
            s, p = best(rest & ~(1 << j))
            if s + pair[i, j] > out[0] + 1e-12:
                out = (s + pair[i, j], p + ((i, j),))
        return out

    m = np.arange(k)
    for i, j in best((1 << k) - 1)[1]:
        m[i], m[j] = j, i
    return m


MAX_EXACT_LIMITED = 12  # the (subset, fixed points left) dynamic programme is exact up to here


def _best_involution_limited(w: np.ndarray, max_fixed: int) -> np.ndarray:
    """:func:`best_involution` with at most ``max_fixed`` fixed points (exact for K ≤ 12, greedy beyond).

    If K − max_fixed is odd one more fixed point is unavoidable and allowed.
    """
    k = w.shape[0]
    max_fixed = max_fixed + ((k - max_fixed) % 2)
    pair = w + w.T
    if k > MAX_EXACT_LIMITED:
        m = best_involution(w)
        fixed = [i for i in range(k) if m[i] == i]
        while len(fixed) > max_fixed:  # pair up the two fixed poses whose pairing costs least
            a, b = max(((i, j) for i in fixed for j in fixed if i < j), key=lambda ij: pair[ij] - w[ij[0], ij[0]] - w[ij[1], ij[1]])
            m[a], m[b] = b, a
            fixed = [i for i in fixed if i not in (a, b)]
        return m

    @cache
    def best(mask: int, left: int) -> tuple[float, tuple[tuple[int, int], ...]]:
        if mask == 0:
            return 0.0, ()
        i = (mask & -mask).bit_length() - 1
        rest = mask & ~(1 << i)
        out: tuple[float, tuple[tuple[int, int], ...]] = (-np.inf, ())
        if left > 0:
            sc, p = best(rest, left - 1)
            out = (sc + w[i, i], p + ((i, i),))
        j_mask = rest
        while j_mask:
            j = (j_mask & -j_mask).bit_length() - 1
            j_mask &= j_mask - 1
            sc, p = best(rest & ~(1 << j), left)
            if sc + pair[i, j] > out[0] + 1e-12:
                out = (sc + pair[i, j], p + ((i, j),))
        return out

    m = np.arange(k)
    for i, j in best((1 << k) - 1, max_fixed)[1]:
        m[i], m[j] = j, i
    return m


@dataclass
class MirrorClusters:
    centres: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,)
    mirror: np.ndarray  # (K,) involution
    cost: torch.Tensor  # (N, K) joint cost of each image for each pose
    objective: float
    flip_agreement: float  # fraction of images whose flip alone is nearest to the mirror pose of their label


def joint_cost(d: torch.Tensor, f: torch.Tensor, centres: torch.Tensor, mirror: np.ndarray) -> torch.Tensor:
    """(N, K): ‖d_i − c_k‖² + ‖f_i − c_{m[k]}‖²."""
    dd = torch.cdist(d, centres) ** 2  # (N, K)
    ff = torch.cdist(f, centres) ** 2
    return dd + ff[:, torch.as_tensor(mirror, device=d.device)]


def _lloyd(
    d: torch.Tensor, f: torch.Tensor, c: torch.Tensor, mirror: np.ndarray, iters: int, flip_centres: bool, max_fixed: int | None
) -> tuple[torch.Tensor, np.ndarray]:
    """Alternate labels, centres and the mirror map, from centres ``c`` and map ``mirror``, until nothing changes."""
    n, k = d.shape[0], c.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long, device=d.device)
    for _ in range(iters):
        cost = joint_cost(d, f, c, mirror)
        new = cost.argmin(1)
        m_t = torch.as_tensor(mirror, device=d.device)
        sums = torch.zeros_like(c).index_add_(0, new, d)
        cnt = torch.bincount(new, minlength=k).float()
        if flip_centres:
            sums.index_add_(0, m_t[new], f)
            cnt = cnt + torch.bincount(m_t[new], minlength=k).float()
        c = torch.where(cnt[:, None] == 0, c, sums / cnt.clamp_min(1)[:, None])
        # A pose that no real image takes (only flips: happens when flipped features are unlike any real
        # image's, e.g. chiral parts) is re-seeded at the worst-fitting images.
        empty = torch.bincount(new, minlength=k) == 0
        if empty.any():
            worst = cost.gather(1, new[:, None])[:, 0].argsort(descending=True)[: int(empty.sum())]
            c[empty] = d[worst]
        # Mirror map: S[a, b] = Σ_{i: l_i = a} ‖f_i − c_b‖²; the best involution minimises Σ_a S[a, m[a]].
        ff = torch.cdist(f, c) ** 2  # (N, K)
        s = torch.zeros((k, k), dtype=torch.float64, device=d.device).index_add_(0, new, ff.double())
        new_mirror = best_involution(-s.cpu().numpy(), max_fixed)
        if torch.equal(new, labels) and np.array_equal(new_mirror, mirror) and not empty.any():
            break
        labels, mirror = new, new_mirror
    return c, mirror


def mirror_kmeans(
    d: torch.Tensor,
    f: torch.Tensor,
    k: int,
    seed: int = 0,
    n_init: int = 4,
    iters: int = 100,
    flip_centres: bool = False,
    max_fixed: int | None = None,
) -> MirrorClusters:
    """Cluster descriptors ``d`` (N, D) with flipped descriptors ``f`` (N, D) into ``k`` mirror-consistent poses.

    ``flip_centres`` False (default): centres are means of real images only (the flips constrain the labels
    and the mirror map but cannot pull a centre off the real images; measured more robust when flipped
    features are unlike real ones). True: exact coordinate descent on J (centres also average the flips).
    ``max_fixed``: at most this many self-mirror poses (see :func:`best_involution`); None = any number.
    """
    n = d.shape[0]
    if n < k:
        raise InputError(f"cannot find {k} poses in {n} images; use at most {n} poses or add images")
    d, f = d.float(), f.float()
    best: MirrorClusters | None = None
    for r in range(n_init):
        # Alternate two starts: k-means of images and flips together (tends to flip-closed clusters), and
        # of the images alone (can split mirror pairs); the joint objective decides between them.
        if r % 2 == 0:
            c, lab, _ = kmeans(torch.cat([d, f]), k, seed=seed * 1000 + r, n_init=1)
            lab_d, lab_f = lab[:n], lab[n:]
        else:
            c, lab_d, _ = kmeans(d, k, seed=seed * 1000 + r, n_init=1)
            lab_f = (torch.cdist(f, c) ** 2).argmin(1)
        counts = np.zeros((k, k))
        np.add.at(counts, (lab_d.cpu().numpy(), lab_f.cpu().numpy()), 1.0)
        mirror = best_involution(counts, max_fixed)
        c, mirror = _lloyd(d, f, c, mirror, iters, flip_centres, max_fixed)
        cost = joint_cost(d, f, c, mirror)
        labels = cost.argmin(1)
        obj = float(cost.gather(1, labels[:, None]).sum())
        if best is None or obj < best.objective:
            best = _clusters(f, c, labels, mirror, cost, obj)
    assert best is not None
    return best


def _label_means(d: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k, D) mean descriptor of each pose's images (0 for an empty pose)."""
    return torch.zeros(k, d.shape[1], device=d.device).index_add_(0, labels, d) / torch.bincount(labels, minlength=k).float().clamp_min(1)[:, None]


def _clusters(f: torch.Tensor, c: torch.Tensor, labels: torch.Tensor, mirror: np.ndarray, cost: torch.Tensor, obj: float) -> MirrorClusters:
    """MirrorClusters with the flip agreement: the share of images whose flip alone is nearest the mirror pose."""
    flip_alone = (torch.cdist(f, c) ** 2).argmin(1)
    agree = float((flip_alone == torch.as_tensor(mirror, device=f.device)[labels]).float().mean())
    return MirrorClusters(c, labels, mirror, cost, obj, agree)


def clusters_from_labels(d: torch.Tensor, f: torch.Tensor, labels: np.ndarray, mirror: np.ndarray) -> MirrorClusters:
    """The poses ``labels`` (N,) with mirror map ``mirror`` as they are: centres = means of their images, costs
    and objective as in :func:`mirror_kmeans`, no label changes."""
    d, f = d.float(), f.float()
    mirror = np.asarray(mirror, dtype=np.int64)
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=d.device)
    c = _label_means(d, lab, len(mirror))
    cost = joint_cost(d, f, c, mirror)
    return _clusters(f, c, lab, mirror, cost, float(cost.gather(1, lab[:, None]).sum()))


def confidence_from_cost(cost: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax weight of the chosen pose: exp(−cost / T) normalised over poses, at the arg-min."""
    p = torch.softmax(-cost / max(temperature, 1e-8), dim=1)
    return p.max(1).values
