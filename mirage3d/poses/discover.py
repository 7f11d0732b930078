"""Pose discovery: parts → per-image descriptors → mirror-consistent pose clusters → ring → cameras.

``discover_poses(cache, out, config)`` works from a feature cache (``extract.py``) so that the collection's
patch features are never all in memory: the part model is fitted on a sample of images, then the shards
are streamed once to compute the (small) descriptors of every image and of its mirror image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mirage3d.config import save_config
from mirage3d.errors import InputError
from mirage3d.io import atomic_dir, atomic_write_json
from mirage3d.poses.cameras import CameraConfig, make_cameras, write_cameras
from mirage3d.poses.cluster import MirrorClusters, clusters_from_labels, confidence_from_cost, mirror_kmeans
from mirage3d.poses.descriptors import DescriptorConfig, fit_block_scales, flat_descriptors
from mirage3d.poses.extract import ExtractConfig, FeatureCache, sample_indices
from mirage3d.poses.features import Backbone, unet_settings
from mirage3d.poses.model import MODES, DescriptorModel, PoseModel
from mirage3d.poses.parts import fit_parts, fit_pca
from mirage3d.poses.ring import ring_azimuths, score_order
from mirage3d.poses.visual import parts_sheet, pose_sheet

MIN_IMAGES = 8


@dataclass
class DiscoverConfig:
    num_poses: int = 8
    """K, the number of poses (clusters of descriptors)"""
    num_parts: int = 16
    """P, the number of parts (clusters of foreground patch features); 16 measured best in RESEARCH-NOTES"""
    mode: str = "parts"
    """descriptor: "parts" (part visibility + location) or "flat" (PCA of the pooled feature map, the HOG baseline)"""
    centre_images: bool = False
    """subtract each image's mean foreground feature before part clustering (removes paint / car-model identity)"""
    pca_dim: int = 64
    """patch features are PCA-reduced to this many dimensions before part clustering (0 = no reduction)"""
    sample_images: int = 2000
    """images whose patches fit the part model (and the flat-mode PCA)"""
    max_patches: int = 200_000
    """at most this many foreground patches go into the part k-means"""
    w_visibility: float = 0.25
    """descriptor weight of part visibility (visibility is mirror-blind for achiral parts: weighted low, docs/poses.md)"""
    w_location: float = 1.0
    """descriptor weight of part locations"""
    w_box: float = 0.25
    """descriptor weight of the bounding box aspect ratio"""
    flat_grid: int = 8
    """flat mode: feature map average-pooled to grid x grid before PCA"""
    flat_dim: int = 64
    """flat mode: PCA dimensions of the descriptor"""
    n_init: int = 8
    """pose clusterings from different seeds; the lowest objective is kept"""
    part_inits: int = 4
    """part k-means runs (k-means++ seeds); the lowest inertia is kept"""
    max_self_mirror: int | None = None
    """at most this many poses may be their own mirror image (front and back: 2); None = no limit"""
    w_facing: float = 0.0
    """weight of the facing score (which way the object points, from the image and its flip; mirage3d.poses.facing);
    0 = off. With it, poses are clustered twice: once without, to choose the facing axis, then with it"""
    facing_grid: int = 2
    """the facing score pools features over a grid x grid split of the object's box"""
    facing_components: int = 10
    """principal components of the flip differences the facing axis is chosen from"""
    facing_component: int | None = None
    """use this principal component (0-based) as the facing axis instead of the one the first-pass poses explain best"""
    facing_refine: int = 3
    """self-training rounds that refine the facing axis (mirage3d.poses.facing.refine_axis); 0 = the component as is"""
    w_front: float = 0.0
    """weight of the front/back score (mirage3d.poses.facing.FrontModel; needs w_facing > 0); 0 = off. With it, the
    pose pair that holds both front and back views is split by the score, and the ring is ordered by the angle of
    each pose's mean (facing, front) scores (mirage3d.poses.ring.score_order)"""
    restarts: int = 1
    """discovery runs with seeds seed, seed + 1, ...; the one with the highest flip agreement (the share of images
    whose mirror image falls in the mirror pose) is kept. Measured on car renders with the facing and front/back
    scores (docs/poses.md)"""
    front_refine: bool = False
    """after the front/back split, refine the poses by clustering again from it (measured worse in 4 of 6 runs on
    car renders, docs/poses.md; the first shipped model's poses were refined)"""
    front_dim: int = 128
    """whitened principal components of the flip sums the front/back vote compares images in"""
    front_k: int = 10
    """neighbours that vote in the front/back score"""
    front_max_refs: int = 8192
    """at most this many reference images (a random sample) vote, at discovery and in the saved pose model"""
    elevation_deg: float = 17.5
    """camera elevation of every pose"""
    fov_deg: float = 40.0
    """camera field of view"""
    fill: float = 0.85
    """fraction of the half-frame spanned by the object's unit bounding sphere"""
    spacing: str = "uniform"
    """azimuth spacing: "uniform" or "sizes" (arcs proportional to cluster sizes)"""
    sheet_per_pose: int = 12
    """images per pose on the contact sheet"""
    device: str = "auto"
    """device for descriptor computation ("auto": CUDA when present)"""
    seed: int = 0
    """seed of sampling and k-means"""

    def descriptor_config(self) -> DescriptorConfig:
        return DescriptorConfig(self.w_visibility, self.w_location, self.w_box)

    def camera_config(self) -> CameraConfig:
        return CameraConfig(self.elevation_deg, self.fov_deg, self.fill, self.spacing)


@dataclass
class PoseSet:
    """What ``discover_poses`` found (also written to ``folder``)."""

    folder: Path
    files: list[str]
    labels: np.ndarray  # (N,)
    confidence: np.ndarray  # (N,)
    mirror: np.ndarray  # (K,)
    azimuth_deg: np.ndarray  # (K,)
    counts: np.ndarray  # (K,)
    flip_agreement: float
    mirror_residual_deg: float

    @property
    def num_poses(self) -> int:
        return len(self.mirror)


def check_discovery_input(num_images: int, cfg: DiscoverConfig, flip: str | None = None) -> None:
    """Refuse impossible settings before any work is done (``flip``: the feature cache's flip mode, if known)."""
    if cfg.mode not in MODES:
        raise InputError(f"descriptor mode {cfg.mode!r} is unknown; use one of {', '.join(MODES)}")
    if cfg.num_poses < 2:
        raise InputError(f"--poses {cfg.num_poses} is too small; use at least 2 poses")
    if cfg.num_parts < 2:
        raise InputError(f"--parts {cfg.num_parts} is too small; use at least 2 parts")
    if cfg.spacing not in ("uniform", "sizes"):
        raise InputError(f"spacing {cfg.spacing!r} is unknown; use uniform or sizes")
    if not cfg.w_facing >= 0 or cfg.facing_grid < 1 or cfg.facing_components < 1:
        raise InputError(f"--w-facing {cfg.w_facing} must be >= 0 (facing grid and components >= 1)")
    if cfg.w_facing > 0 and flip == "none":
        raise InputError("--w-facing needs mirror features; use --flip image (or features)")
    if not cfg.w_front >= 0 or cfg.front_dim < 1 or cfg.front_k < 1 or cfg.front_max_refs < 2 or cfg.facing_refine < 0:
        raise InputError(f"--w-front {cfg.w_front} must be >= 0 (front dimensions, neighbours >= 1, references >= 2, refine rounds >= 0)")
    if cfg.w_front > 0 and cfg.w_facing <= 0:
        raise InputError("--w-front needs the facing score; give --w-facing too (e.g. --w-facing 0.5 --w-front 0.5)")
    if cfg.facing_component is not None and not 0 <= cfg.facing_component < cfg.facing_components:
        raise InputError(f"--facing-component {cfg.facing_component} must be in 0..{cfg.facing_components - 1}")
    if not 1 <= cfg.restarts <= 64:
        raise InputError(f"--restarts {cfg.restarts} must be in 1..64")
    if cfg.restarts > 1 and flip == "none":
        raise InputError("--restarts compares runs by their flip agreement and needs mirror features; use --flip image (or features)")
    if num_images < MIN_IMAGES:
        raise InputError(f"pose discovery needs at least {MIN_IMAGES} images; the collection has {num_images}")
    if cfg.num_poses > num_images:
        raise InputError(f"cannot find {cfg.num_poses} poses in {num_images} images; use --poses {num_images} or fewer, or add images")


def _gather(cache: FeatureCache, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows ``idx`` (sorted) of every cached tensor, loading one shard at a time."""
    out: dict[str, list[torch.Tensor]] = {}
    for s in np.unique(idx // cache.shard_size):
        data = cache.load_shard(int(s))
        local = torch.as_tensor(idx[idx // cache.shard_size == s] - s * cache.shard_size)
        for k, v in data.items():
            out.setdefault(k, []).append(v[local])
    return {k: torch.cat(v) for k, v in out.items()}


def fit_descriptor_model(cache: FeatureCache, cfg: DiscoverConfig, device: torch.device) -> DescriptorModel:
    """Part model (or flat PCA) from a sample of the cache; normalisation is fitted later."""
    sample = _gather(cache, sample_indices(cache.num_images, cfg.sample_images, cfg.seed))
    feats = sample["feats"].to(device).float()
    if cfg.mode == "flat":
        mean, proj = fit_pca(flat_descriptors(feats, cfg.flat_grid), cfg.flat_dim)
        return DescriptorModel("flat", flat_mean=mean, flat_proj=proj, flat_grid=cfg.flat_grid)
    pm = fit_parts(feats, sample["fg"].to(device).float(), sample["has_mask"].bool().to(device), cfg.num_parts, cfg.pca_dim, cfg.seed, cfg.max_patches, cfg.centre_images,
                   cfg.part_inits)
    return DescriptorModel("parts", parts=pm)


def compute_descriptors(cache: FeatureCache, dm: DescriptorModel, device: torch.device, progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw descriptors of every image and of its mirror image (None if the cache has no flips), streamed."""
    dm = dm.to(device)
    ds, fs = [], []
    for start, data in cache.iter_shards():
        fg, has_mask = data["fg"].to(device).float(), data["has_mask"].bool().to(device)
        if "feats_flip" in data:
            d, f = dm.raw_pair(data["feats"].to(device).float(), data["feats_flip"].to(device).float(), fg, has_mask)
            ds.append(d.cpu())
            fs.append(f.cpu())
        else:
            ds.append(dm.raw(data["feats"].to(device).float(), fg, has_mask).cpu())
        if progress is not None:
            progress(start + len(fg), cache.num_images)
    return torch.cat(ds), (torch.cat(fs) if fs else None)


def fit_normalisation(dm: DescriptorModel, d_raw: torch.Tensor, f_raw: torch.Tensor | None, cfg: DiscoverConfig) -> None:
    both = d_raw if f_raw is None else torch.cat([d_raw, f_raw])
    dm.desc_mean = both.mean(0)
    # The facing and front scores, when present, are the last columns (in that order), each its own block.
    extra = [w for w, m in ((cfg.w_facing, dm.facing), (cfg.w_front, dm.front)) if m is not None]
    base = both[:, : both.shape[1] - len(extra)]
    if dm.mode == "flat":
        scale = torch.full((base.shape[1],), 1.0 / float(base.var(0, unbiased=False).sum().clamp_min(1e-12).sqrt()))
    else:
        scale = fit_block_scales(base, dm.parts.num_parts, cfg.descriptor_config())
    for j, w in enumerate(extra):  # unit variance times its weight
        col = both[:, base.shape[1] + j]
        scale = torch.cat([scale, torch.tensor([w / float(col.std().clamp_min(1e-12))])])
    dm.desc_scale = scale


def pooled_pairs(cache: FeatureCache, dm: DescriptorModel, device: torch.device, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-pooled features b(x) and b(flip x) (N, C·grid²) of every cached image (mirage3d.poses.facing)."""
    from mirage3d.poses.facing import box_pool

    bs, bfs = [], []
    dm = dm.to(device)
    for _, data in cache.iter_shards():
        if "feats_flip" not in data:
            raise InputError("the facing score needs mirror features; extract them with --flip image (or features)")
        feats = data["feats"].to(device).float()
        fg = dm.foreground(feats, data["fg"].to(device).float(), data["has_mask"].bool().to(device))
        bs.append(box_pool(feats, fg, grid).cpu())
        bfs.append(box_pool(data["feats_flip"].to(device).float(), fg.flip(-1), grid).cpu())
    return torch.cat(bs), torch.cat(bfs)


def add_facing(c: torch.Tensor, dm: DescriptorModel, labels: np.ndarray, d_raw: torch.Tensor, f_raw: torch.Tensor,
               cfg: DiscoverConfig) -> tuple[torch.Tensor, torch.Tensor, list[float]]:  # fmt: skip
    """Fit the facing axis on flip differences ``c`` with pose ``labels`` and append the scores (+s to images,
    −s to flips)."""
    from mirage3d.poses.facing import fit_facing

    facing, etas = fit_facing(c, labels, cfg.facing_components, cfg.facing_grid, component=cfg.facing_component, refine=cfg.facing_refine)
    s = (c @ facing.axis.to(c.device)).cpu()[:, None]
    if float(s.std()) <= 1e-6 * float(c.norm(dim=1).mean().clamp_min(1e-12)):  # mirror-symmetric features: no facing signal
        return d_raw, f_raw, etas
    dm.facing = facing.to("cpu")
    return torch.cat([d_raw, s], 1), torch.cat([f_raw, -s], 1), etas


def _reference_sample(votes: np.ndarray, cfg: DiscoverConfig) -> np.ndarray:
    """Indices of the images that vote (votes != 0), at most ``cfg.front_max_refs`` of them (seeded sample)."""
    idx = np.flatnonzero(votes != 0)
    if len(idx) > cfg.front_max_refs:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, cfg.front_max_refs, replace=False))
    return idx


def fit_front_model(g: torch.Tensor, votes: np.ndarray, dm: DescriptorModel, cfg: DiscoverConfig) -> np.ndarray | None:
    """Front model from flip sums ``g`` and per-image ``votes`` (+1 / −1 / 0 = no vote) into ``dm.front``;
    returns every image's score (a reference does not vote for itself), or None with too few voters."""
    from mirage3d.poses.facing import fit_front

    ref = _reference_sample(votes, cfg)
    if len(ref) < 2 or len(np.unique(votes[ref])) < 2:
        return None
    front = fit_front(g, torch.as_tensor(votes[ref]), torch.as_tensor(ref), cfg.front_dim, cfg.front_k, cfg.facing_grid)
    position = np.full(len(g), -1, dtype=np.int64)
    position[ref] = np.arange(len(ref))
    r = front.score_sums(g, exclude=torch.as_tensor(position)).numpy()
    dm.front = front
    return r


def add_front(b: torch.Tensor, bf: torch.Tensor, dm: DescriptorModel, labels: np.ndarray, mirror: np.ndarray, d_raw: torch.Tensor,
              f_raw: torch.Tensor, cfg: DiscoverConfig) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray] | None:  # fmt: skip
    """Split the front/back pose pair with the front score (mirage3d.poses.facing, "Front or back").

    ``labels``/``mirror``: the poses clustered with the facing score (the last column of ``d_raw``). The
    mirror orbit with the lowest mean |facing score| is the front/back pair; the next two orbits vote +1 and
    −1. Returns descriptors with the score appended (the same for an image and its flip) and the split
    labels and mirror map to refine from, or None (``dm.front`` unset) when the lowest orbit is not a pair
    of poses or fewer than three orbits exist.
    """
    from mirage3d.poses.facing import mirror_orbits

    orbits = mirror_orbits(labels, mirror, d_raw[:, -1].numpy())
    if len(orbits) < 3 or len(orbits[0]) != 2:
        return None
    votes = np.zeros(len(labels))
    votes[np.isin(labels, orbits[1])], votes[np.isin(labels, orbits[2])] = 1.0, -1.0
    r = fit_front_model(b + bf, votes, dm, cfg)
    if r is None:
        return None
    pair, labels, mirror = orbits[0], labels.copy(), np.array(mirror)
    sel = np.isin(labels, pair)
    # At the median score; the vote takes few values, so of ">" and ">=" the more even split is taken.
    m = float(np.median(r[sel]))
    front = min(r > m, r >= m, key=lambda x: abs(int((x & sel).sum()) - int(sel.sum()) / 2))
    labels[sel & front], labels[sel & ~front] = pair[0], pair[1]
    mirror[pair[0]], mirror[pair[1]] = pair[0], pair[1]
    rt = torch.as_tensor(r, dtype=d_raw.dtype)[:, None]
    return torch.cat([d_raw, rt], 1), torch.cat([f_raw, rt], 1), labels, mirror


@dataclass
class _Run:
    """One discovery run (one seed): the descriptor model, the poses and the ring order when the scores set it."""

    dm: DescriptorModel
    mc: MirrorClusters
    facing_eta2: list[float] | None
    ring_order: list[int] | None


def _discover_once(cache: FeatureCache, cfg: DiscoverConfig, device: torch.device, progress: Callable[[int, int], None] | None) -> _Run:
    torch.manual_seed(cfg.seed)
    dm = fit_descriptor_model(cache, cfg, device)
    d_raw, f_raw = compute_descriptors(cache, dm, device, progress)
    return cluster_poses(dm, d_raw, f_raw, lambda: pooled_pairs(cache, dm, device, cfg.facing_grid), cfg)


def cluster_poses(dm: DescriptorModel, d_raw: torch.Tensor, f_raw: torch.Tensor | None, pooled: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                  cfg: DiscoverConfig) -> _Run:  # fmt: skip
    """Poses from the raw descriptors of the images (and of their flips): the mirror-consistent clustering, then
    the facing and front/back passes when configured. ``pooled()`` gives the box-pooled features b(x), b(flip x)
    those passes need (computed only then). Fits the normalisation (and the scores) into ``dm``."""
    fit_normalisation(dm, d_raw, f_raw, cfg)
    d = dm.normalise(d_raw)
    f = dm.normalise(f_raw) if f_raw is not None else d  # no flips: f = d makes m = identity the best map
    mc = mirror_kmeans(d, f, cfg.num_poses, seed=cfg.seed, n_init=cfg.n_init, max_fixed=cfg.max_self_mirror)
    facing_eta2 = None
    ring_order = None
    if cfg.w_facing > 0:  # (check_discovery_input refused a cache without mirror features)
        b, bf = pooled()
        d_raw, f_raw, facing_eta2 = add_facing(b - bf, dm, mc.labels.numpy(), d_raw, f_raw, cfg)
        if dm.facing is not None:  # (None: the features hold no left/right difference; the first pass stands)
            fit_normalisation(dm, d_raw, f_raw, cfg)
            d, f = dm.normalise(d_raw), dm.normalise(f_raw)
            # With the front/back step, no pose may be its own mirror yet: the front and back views (facing ≈ 0)
            # must land in one mirror pair, which add_front splits into two self-mirror poses. A free mirror map
            # sometimes made the front/back views one self-mirror pose, and the split was skipped (docs/poses.md).
            max_fixed = 0 if cfg.w_front > 0 else cfg.max_self_mirror
            mc = mirror_kmeans(d, f, cfg.num_poses, seed=cfg.seed, n_init=cfg.n_init, max_fixed=max_fixed)
            split = add_front(b, bf, dm, mc.labels.numpy(), mc.mirror, d_raw, f_raw, cfg) if cfg.w_front > 0 else None
            if split is not None:
                d_raw, f_raw, init_labels, init_mirror = split
                fit_normalisation(dm, d_raw, f_raw, cfg)
                d, f = dm.normalise(d_raw), dm.normalise(f_raw)
                if cfg.front_refine:
                    mc = mirror_kmeans(d, f, cfg.num_poses, max_fixed=cfg.max_self_mirror, init=(init_labels, init_mirror))
                else:  # the split poses as they are (centres and costs recomputed with the front column)
                    mc = clusters_from_labels(d, f, init_labels, init_mirror)
                # the last two descriptor columns: the facing score, then the front score add_front appended
                ring_order = score_order(mc.labels.numpy(), d_raw[:, -2].numpy(), d_raw[:, -1].numpy(), cfg.num_poses)
        del b, bf
    if f_raw is None:
        mc.mirror = np.arange(cfg.num_poses)
    return _Run(dm, mc, facing_eta2, ring_order)


def discover_poses(cache: FeatureCache, collection: str | Path, out: str | Path, cfg: DiscoverConfig | None = None, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> PoseSet:
    """Discover ``cfg.num_poses`` poses in the cached collection and write the poses folder ``out``."""
    from mirage3d.devices import resolve_device

    cfg = cfg or DiscoverConfig()
    check_discovery_input(cache.num_images, cfg, cache.flip)
    collection = Path(collection)
    device = resolve_device(cfg.device)
    # Restarts: discovery with seeds seed, seed + 1, ...; the run whose poses are most consistent with the
    # mirror images (highest flip agreement) is kept. Measured on car renders (docs/poses.md).
    best, seed_used, restarts_info = None, cfg.seed, []
    for seed in range(cfg.seed, cfg.seed + cfg.restarts):
        run = _discover_once(cache, replace(cfg, seed=seed), device, progress)
        restarts_info.append({"seed": seed, "flip_agreement": round(run.mc.flip_agreement, 5)})
        if best is None or run.mc.flip_agreement > best.mc.flip_agreement:  # of equals, the lowest seed
            best, seed_used = run, seed
    assert best is not None
    dm, mc, facing_eta2, ring_order = best.dm, best.mc, best.facing_eta2, best.ring_order
    k = cfg.num_poses
    counts = np.bincount(mc.labels.numpy(), minlength=k)
    dist = torch.cdist(mc.centres.double(), mc.centres.double()).numpy()
    ring = ring_azimuths(dist, mc.mirror, counts if cfg.spacing == "sizes" else None, order=ring_order)

    # Renumber poses by azimuth (pose 0 nearest azimuth 0, then counter-clockwise).
    perm = np.argsort(ring.azimuth_deg, kind="stable")  # new → old
    inv = np.argsort(perm)  # old → new
    labels = inv[mc.labels.numpy()]
    mirror = inv[mc.mirror[perm]]
    azimuth = ring.azimuth_deg[perm]
    centres = mc.centres[torch.as_tensor(perm)]
    cost = mc.cost[:, torch.as_tensor(perm)]
    best_cost = cost.gather(1, torch.as_tensor(labels)[:, None])[:, 0]
    temperature = float(best_cost.median().clamp_min(1e-6))
    confidence = confidence_from_cost(cost, temperature).numpy()
    counts = counts[perm]

    model = PoseModel(cache.backbone, dm.to("cpu"), centres, mirror, cache.flip, temperature,
                      extra={"grid": list(cache.grid), "image_size": cache.image_size})  # fmt: skip
    cameras = make_cameras(azimuth, _image_res(collection, cache), cfg.camera_config())
    files = [collection / p for p in cache.files]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "poses.json", {
            "num_poses": k, "files": cache.files, "labels": [int(x) for x in labels],
            "confidence": [round(float(x), 5) for x in confidence], "mirror": [int(x) for x in mirror],
            "azimuth_deg": [float(a) for a in azimuth], "counts": [int(c) for c in counts],
            "ring_order": [int(inv[o]) for o in ring.order], "flip_agreement": mc.flip_agreement,
            # share of the images that the saved model (nearest centre) assigns as labelled here: < 1 when the
            # front/back split is kept as it is (front_refine False)
            "assign_agreement": float((mc.cost.argmin(1) == mc.labels).float().mean()),
            "mirror_residual_deg": ring.mirror_residual_deg, "objective": mc.objective,
            **({} if facing_eta2 is None else {"facing_eta2": [round(x, 5) for x in facing_eta2], "facing_used": dm.facing is not None}),
            **({} if cfg.w_front <= 0 else {"front_used": dm.front is not None}),
            **({} if cfg.restarts == 1 else {"restarts": restarts_info, "seed_used": seed_used}),
        })  # fmt: skip
        write_cameras(tmp, cameras)
        model.save(tmp)
        save_config(cfg, tmp / "config.json", features=str(cache.folder), collection=str(collection.resolve()), backbone=cache.backbone)
        pose_sheet(files, labels, confidence, azimuth, cfg.sheet_per_pose).save(tmp / "poses_sheet.png")
        if dm.mode == "parts":
            _write_parts_image(tmp / "parts.png", cache, dm, files, labels, confidence, device)
    return PoseSet(Path(out), cache.files, labels, confidence, mirror, azimuth, counts, mc.flip_agreement, ring.mirror_residual_deg)


def _image_res(collection: Path, cache: FeatureCache) -> int:
    from PIL import Image

    with Image.open(collection / cache.files[0]) as im:
        return int(max(im.size))


def _write_parts_image(path: Path, cache: FeatureCache, dm: DescriptorModel, files: list[Path], labels: np.ndarray, confidence: np.ndarray, device: torch.device) -> None:
    """The most confident image of each pose (up to 12), with its patches coloured by part."""
    picks = []
    for p in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == p)
        if len(members):
            picks.append(int(members[np.argmax(confidence[members])]))
    picks = np.array(sorted(picks[:12]))
    data = _gather(cache, picks)
    pm = dm.parts.to(device)
    feats = data["feats"].to(device).float()
    fg = pm.foreground(feats, data["fg"].to(device).float(), data["has_mask"].bool().to(device))
    parts_sheet([files[i] for i in picks], pm.assign(feats, fg).cpu().numpy(), fg.cpu().numpy(), pm.num_parts).save(path)


@dataclass
class RefitResult:
    folder: Path
    agreement: float  # fraction of collection images the refitted model labels as the fixed labels


def refit_pose_model(poses_dir: str | Path, backbone: Backbone, collection: str | Path, out_dir: str | Path, features: str | Path | None = None,
                     extract_config: ExtractConfig | None = None, overwrite: bool = False) -> RefitResult:  # fmt: skip
    """Refit part centroids, descriptor normalisation and pose centres for another ``backbone``, labels fixed.

    The poses (labels, mirror map, cameras) of ``poses_dir`` are kept; only the pose model is rebuilt so that
    ``PoseModel.load(out_dir, backbone)`` assigns the same poses from the new backbone's features (e.g. the
    final pose-conditioned UNet instead of the phase-1 one). Files other than the pose model are copied.
    """
    import shutil

    from mirage3d.config import load_config
    from mirage3d.poses.cluster import joint_cost
    from mirage3d.devices import resolve_device
    from mirage3d.poses.extract import default_cache_dir, extract_features

    from mirage3d.io import read_poses_json

    poses_dir, collection = Path(poses_dir), Path(collection)
    poses = read_poses_json(poses_dir)
    cfg = load_config(DiscoverConfig, poses_dir / "config.json")
    ecfg = extract_config or ExtractConfig()
    labels = torch.as_tensor(poses["labels"], dtype=torch.long)
    mirror = np.asarray(poses["mirror"], dtype=np.int64)
    cache = extract_features(collection, features or default_cache_dir(collection, backbone, ecfg.flip), backbone, ecfg)
    if cache.files != poses["files"]:
        raise InputError(f"{collection} does not hold the {len(poses['files'])} images that {poses_dir} labels; pass the collection poses were discovered on")
    device = resolve_device(cfg.device)
    dm = fit_descriptor_model(cache, cfg, device)
    d_raw, f_raw = compute_descriptors(cache, dm, device)
    if cfg.w_facing > 0 and f_raw is not None:  # the facing axis is refitted too, with the fixed labels
        b, bf = pooled_pairs(cache, dm, device, cfg.facing_grid)
        d_raw, f_raw, _ = add_facing(b - bf, dm, labels.numpy(), d_raw, f_raw, cfg)
        if cfg.w_front > 0 and dm.facing is not None:
            # The front score again, with the fixed poses voting by their azimuth: +1 within 60° of the pose
            # at 0°, −1 within 60° of 180°, the rest not at all (at discovery the poses did not exist yet).
            az = np.asarray(poses["azimuth_deg"], dtype=np.float64)
            cos = np.cos(np.deg2rad(az))[labels.numpy()]
            r = fit_front_model(b + bf, np.where(np.abs(cos) >= 0.5, np.sign(cos), 0.0), dm, cfg)
            if r is not None:
                rt = torch.as_tensor(r, dtype=d_raw.dtype)[:, None]
                d_raw, f_raw = torch.cat([d_raw, rt], 1), torch.cat([f_raw, rt], 1)
    fit_normalisation(dm, d_raw, f_raw, cfg)
    d = dm.normalise(d_raw)
    f = dm.normalise(f_raw) if f_raw is not None else d
    k = int(poses["num_poses"])
    m_t = torch.as_tensor(mirror)
    sums = torch.zeros(k, d.shape[1]).index_add_(0, labels, d).index_add_(0, m_t[labels], f)
    cnt = torch.bincount(labels, minlength=k).float() + torch.bincount(m_t[labels], minlength=k).float()
    centres = sums / cnt.clamp_min(1)[:, None]
    cost = joint_cost(d, f, centres, mirror)
    temperature = float(cost.gather(1, labels[:, None]).median().clamp_min(1e-6))
    agreement = float((cost.argmin(1) == labels).float().mean())
    model = PoseModel(backbone.reference(), dm.to("cpu"), centres, mirror, cache.flip if f_raw is not None else "none", temperature,
                      extra={"grid": list(cache.grid), "image_size": cache.image_size, "refit_from": str(poses_dir.resolve()), "refit_agreement": agreement})  # fmt: skip
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for p in poses_dir.iterdir():
            if p.is_file() and not p.name.startswith("pose_model") and not p.name.startswith("."):
                shutil.copy2(p, tmp / p.name)
        model.save(tmp)
    return RefitResult(Path(out_dir), agreement)


def assign_files(images: list[Path], poses_dir: str | Path, backbone: str | Path | None = None, device: str = "auto", batch_size: int = 32) -> list[dict]:
    """Pose, azimuth and confidence of image files through the pose model of ``poses_dir``."""
    from mirage3d.data.collection import load_model_image
    from mirage3d.poses.cameras import load_cameras
    from mirage3d.devices import resolve_device
    from mirage3d.poses.extract import MASK_MIN_TRANSPARENT
    from mirage3d.poses.features import load_backbone
    from mirage3d.poses.model import PoseModel

    if not images:
        raise InputError("give at least one image to assign")
    bb = None if backbone is None else load_backbone(str(backbone), **_unet_settings(poses_dir))
    model = PoseModel.load(poses_dir, bb)
    if model.backbone is None:
        model.backbone = load_backbone(model.backbone_ref)
    model.backbone.to(resolve_device(device))
    azimuth = {c.pose: c.azimuth_deg for c in load_cameras(poses_dir)}
    res = model.backbone.image_size
    loaded = [load_model_image(Path(p), res) for p in images]  # validates every file before any work
    rows: list[dict] = []
    for s in range(0, len(loaded), batch_size):
        chunk = loaded[s : s + batch_size]
        x = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1) for rgb, _ in chunk]) * 2 - 1  # (B, 3, H, W)
        a = torch.stack([torch.from_numpy(alpha)[None] for _, alpha in chunk])  # (B, 1, H, W)
        masked = (a < 0.5).float().mean(dim=(1, 2, 3)) >= MASK_MIN_TRANSPARENT
        labels, conf = np.zeros(len(chunk), dtype=np.int64), np.zeros(len(chunk))
        for sel, m in ((masked, a), (~masked, None)):
            if bool(sel.any()):
                lab, c = model.assign(x[sel], None if m is None else m[sel])
                labels[sel.numpy()], conf[sel.numpy()] = lab, c
        for j, (lab, c) in enumerate(zip(labels, conf, strict=True)):
            rows.append({"file": str(images[s + j]), "pose": int(lab), "azimuth_deg": float(azimuth[int(lab)]), "confidence": float(c)})
    return rows


def _unet_settings(poses_dir: str | Path) -> dict:
    """Timestep / blocks / seed / colour permutations / noise maps recorded in the pose model, so a replacement UNet is read the same way."""
    import json

    ref = json.loads((Path(poses_dir) / "pose_model.json").read_text()).get("backbone", {}) if (Path(poses_dir) / "pose_model.json").exists() else {}
    return unet_settings(ref) if ref.get("kind") == "unet" else {}
