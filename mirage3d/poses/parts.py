"""Parts: clusters of foreground patch features shared across the collection, and the foreground itself.

Patch features are L2-normalised, centred, PCA-reduced and L2-normalised again; parts are spherical
k-means centres of a sample of foreground patches, and every patch is assigned to the part of highest
cosine similarity. Without an alpha mask the foreground is where a patch's projection on the first principal
component of all patch features is above 0, signed so that the image border (background) is negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mirage3d.errors import InputError


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, n_init: int = 4, iters: int = 100, spherical: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means with k-means++ seeding, best of ``n_init``: (centres (k, D), labels (N,), inertia).

    ``spherical``: points and centres live on the unit sphere (cosine k-means). Deterministic for a seed.
    """
    n = x.shape[0]
    if n < k:
        raise InputError(f"cannot make {k} clusters from {n} points; lower the number of clusters or add images")
    g = torch.Generator(device="cpu").manual_seed(seed)
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    x = x.float()
    x2 = (x * x).sum(1)
    for _ in range(n_init):
        idx = [int(torch.randint(n, (1,), generator=g))]
        d2 = torch.full((n,), float("inf"), device=x.device)
        for _j in range(1, k):
            d2 = torch.minimum(d2, ((x - x[idx[-1]]) ** 2).sum(1))
            p = (d2.clamp_min(0) / d2.clamp_min(0).sum().clamp_min(1e-12)).cpu().double()
            idx.append(int(torch.multinomial(p, 1, generator=g)) if float(p.sum()) > 0 else int(torch.randint(n, (1,), generator=g)))
        c = x[idx].clone()
        labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
        for _it in range(iters):
            dist = x2[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]  # (N, k)
            new = dist.argmin(1)
            if torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).float()
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            empty = counts == 0
            c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
            if empty.any():  # re-seed an empty cluster at the point farthest from its centre
                far = dist.gather(1, labels[:, None])[:, 0].argsort(descending=True)[: int(empty.sum())]
                c[empty] = x[far]
            if spherical:
                c = F.normalize(c, dim=1)
        dist = x2[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
        labels = dist.argmin(1)
        inertia = float(dist.gather(1, labels[:, None]).clamp_min(0).sum())
        if best is None or inertia < best[2]:
            best = (c, labels, inertia)
    assert best is not None
    return best


def fit_pca(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (C,), components (C, d)) of the top-``dim`` principal directions of ``x`` (N, C)."""
    x = x.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    comps = evecs.flip(1)[:, : min(dim, x.shape[1])]
    # Deterministic sign: the largest-magnitude entry of each component is positive.
    sign = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    return mean.float(), (comps * sign).float()


@dataclass
class PartModel:
    """Everything needed to map patch features (…, C) to parts and foreground."""

    mean: torch.Tensor  # (C,) mean of L2-normalised features
    proj: torch.Tensor  # (C, d) PCA components (d = C without reduction)
    centroids: torch.Tensor  # (P, d) unit-norm part centres
    fg_mean: torch.Tensor  # (C,) mean used for the foreground principal component
    fg_axis: torch.Tensor  # (C,) first principal component, signed so the image border is negative
    fg_threshold: float = 0.0

    @property
    def num_parts(self) -> int:
        return int(self.centroids.shape[0])

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """(…, C) → (…, d) unit-norm reduced features."""
        return F.normalize((F.normalize(feats.float(), dim=-1) - self.mean) @ self.proj, dim=-1)

    def assign(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, h, w, C) → (N, h, w) part index of highest cosine similarity."""
        return (self.embed(feats) @ self.centroids.T).argmax(-1)

    def feature_foreground(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, h, w, C) → (N, h, w) in {0, 1}: projection on the foreground axis above the threshold."""
        f = F.normalize(feats.float(), dim=-1)
        return (((f - self.fg_mean) @ self.fg_axis) > self.fg_threshold).float()

    def foreground(self, feats: torch.Tensor, fg_alpha: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """(N, h, w) foreground weight: alpha coverage where the image has a mask, else from the features."""
        fg = fg_alpha.float()
        no_mask = ~has_mask.bool()
        if no_mask.any():
            fg = fg.clone()
            fg[no_mask] = self.feature_foreground(feats[no_mask])
        return fg

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"part_mean": self.mean, "part_proj": self.proj, "part_centroids": self.centroids, "fg_mean": self.fg_mean, "fg_axis": self.fg_axis}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], fg_threshold: float = 0.0) -> PartModel:
        return cls(
            t["part_mean"].float(), t["part_proj"].float(), t["part_centroids"].float(), t["fg_mean"].float(), t["fg_axis"].float(), fg_threshold
        )

    def to(self, device: torch.device | str) -> PartModel:
        return PartModel(*(getattr(self, k).to(device) for k in ("mean", "proj", "centroids", "fg_mean", "fg_axis")), self.fg_threshold)


def fit_foreground_axis(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First principal component of the patch features (N, h, w, C), signed so border patches project < 0."""
    f = F.normalize(feats.float(), dim=-1)
    mean, comps = fit_pca(f.reshape(-1, f.shape[-1]), 1)
    axis = comps[:, 0]
    border = torch.ones(f.shape[1:3], dtype=torch.bool, device=f.device)
    border[1:-1, 1:-1] = False
    if float(((f[:, border] - mean) @ axis).mean()) > 0:
        axis = -axis
    return mean, axis


def fit_parts(
    feats: torch.Tensor,
    fg: torch.Tensor,
    has_mask: torch.Tensor,
    num_parts: int,
    pca_dim: int = 64,
    seed: int = 0,
    max_patches: int = 200_000,
    n_init: int = 4,
) -> PartModel:
    """Fit the part model on a sample: ``feats`` (N, h, w, C), ``fg`` (N, h, w) alpha coverage in [0, 1].

    Images without a mask (``has_mask`` (N,) false) get their foreground from the features' first principal
    component instead.
    """
    fg_mean, fg_axis = fit_foreground_axis(feats)
    fg = PartModel(fg_mean, fg_mean[:, None], fg_mean[None], fg_mean, fg_axis).foreground(feats, fg, has_mask)
    x = F.normalize(feats.float(), dim=-1)[fg >= 0.5]  # (M, C) foreground patches
    if x.shape[0] < num_parts:
        raise InputError(f"only {x.shape[0]} foreground patches to cluster into {num_parts} parts; lower --parts or check the masks")
    if x.shape[0] > max_patches:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:max_patches]]
    mean, proj = fit_pca(x, pca_dim if pca_dim > 0 else x.shape[1])  # (C,), (C, d)
    z = F.normalize((x - mean) @ proj, dim=-1)
    centroids, _, _ = kmeans(z, num_parts, seed=seed, n_init=n_init, spherical=True)
    return PartModel(mean, proj, F.normalize(centroids, dim=1), fg_mean, fg_axis)
