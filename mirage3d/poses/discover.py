"""Pose discovery: parts → per-image descriptors → mirror-consistent pose clusters → ring → cameras.

``discover_poses(cache, out, config)`` works from a feature cache (``extract.py``) so that the collection's
patch features are never all in memory: the part model is fitted on a sample of images, then the shards
are streamed once to compute the (small) descriptors of every image and of its mirror image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirage3d.config import save_config
from mirage3d.errors import InputError
from mirage3d.io import atomic_dir
from mirage3d.poses.cameras import make_cameras, write_cameras
from mirage3d.poses.cluster import MirrorClusters, clusters_from_labels, confidence_from_cost, mirror_kmeans
from mirage3d.poses.config import DiscoverConfig
from mirage3d.poses.descriptors import LAYOUT_DIMS, LAYOUT_GRID, fit_block_scales
from mirage3d.poses.extract import FeatureCache, sample_indices
from mirage3d.poses.facing import box_pool
from mirage3d.poses.model import DescriptorModel, LayoutModel, PoseModel
from mirage3d.poses.parts import fit_parts
from mirage3d.poses.poseset import PoseSet
from mirage3d.poses.ring import Ring, ring_azimuths, score_order
from mirage3d.poses.visual import parts_sheet, pose_sheet

MIN_IMAGES = 8


def check_discovery_input(num_images: int, cfg: DiscoverConfig, flip: str | None = None) -> None:
    """Refuse settings that do not fit the data before any work is done (``flip``: the feature cache's flip
    mode, if known). The config checked itself when it was made."""
    if cfg.facing.w_facing > 0 and flip == "none":
        raise InputError("the facing score needs mirror features; use --flip image (or features), or --w-facing 0")
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
    """Part model from a sample of the cache; the normalisation is fitted later."""
    pc = cfg.parts
    sample = _gather(cache, sample_indices(cache.num_images, pc.sample_images, cfg.seed))
    pm = fit_parts(
        sample["feats"].to(device).float(),
        sample["fg"].to(device).float(),
        sample["has_mask"].bool().to(device),
        pc.num_parts,
        pc.pca_dim,
        cfg.seed,
        pc.max_patches,
        pc.inits,
    )
    dm = DescriptorModel(pm, cfg.descriptor.fg_threshold)
    if cfg.descriptor.w_layout > 0:  # principal components of the sample's box-pooled features (and of its flips)
        feats = sample["feats"].to(device).float()
        fg = dm.foreground(feats, sample["fg"].to(device).float(), sample["has_mask"].bool().to(device))
        pooled = [box_pool(feats, fg, LAYOUT_GRID)]
        if "feats_flip" in sample:
            pooled.append(box_pool(sample["feats_flip"].to(device).float(), fg.flip(-1), LAYOUT_GRID))
        pooled_all = torch.cat(pooled).cpu()
        dm.layout = LayoutModel.fit(pooled_all, min(LAYOUT_DIMS, *pooled_all.shape), LAYOUT_GRID)
    return dm


def compute_descriptors(
    cache: FeatureCache, dm: DescriptorModel, device: torch.device, progress: Callable[[int, int], None] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
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
    extra = [w for w, m in ((cfg.facing.w_facing, dm.facing), (cfg.facing.w_front, dm.front)) if m is not None]
    base = both[:, : both.shape[1] - len(extra)]
    scale = fit_block_scales(base, dm.parts.num_parts, cfg.descriptor, dm.layout_dims)
    for j, w in enumerate(extra):  # unit variance times its weight
        col = both[:, base.shape[1] + j]
        scale = torch.cat([scale, torch.tensor([w / float(col.std().clamp_min(1e-12))])])
    dm.desc_scale = scale


def pooled_pairs(cache: FeatureCache, dm: DescriptorModel, device: torch.device, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-pooled features b(x) and b(flip x) (N, C·grid²) of every cached image (mirage3d.poses.facing)."""
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


def add_facing(
    c: torch.Tensor, dm: DescriptorModel, labels: np.ndarray, d_raw: torch.Tensor, f_raw: torch.Tensor, cfg: DiscoverConfig
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit the facing axis on flip differences ``c`` with pose ``labels`` and append the scores (+s to images,
    −s to flips)."""
    from mirage3d.poses.facing import fit_facing

    fc = cfg.facing
    facing, etas = fit_facing(c, labels, fc.components, fc.grid, component=fc.component, refine=fc.refine)
    s = (c @ facing.axis.to(c.device)).cpu()[:, None]
    if float(s.std()) <= 1e-6 * float(c.norm(dim=1).mean().clamp_min(1e-12)):  # mirror-symmetric features: no facing signal
        return d_raw, f_raw, etas
    dm.facing = facing.to("cpu")
    return torch.cat([d_raw, s], 1), torch.cat([f_raw, -s], 1), etas


def _reference_sample(votes: np.ndarray, cfg: DiscoverConfig) -> np.ndarray:
    """Indices of the images that vote (votes != 0), at most ``cfg.facing.front_max_refs`` of them (seeded sample)."""
    idx = np.flatnonzero(votes != 0)
    if len(idx) > cfg.facing.front_max_refs:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, cfg.facing.front_max_refs, replace=False))
    return idx


def fit_front_model(g: torch.Tensor, votes: np.ndarray, dm: DescriptorModel, cfg: DiscoverConfig) -> np.ndarray | None:
    """Front model from flip sums ``g`` and per-image ``votes`` (+1 / −1 / 0 = no vote) into ``dm.front``;
    returns every image's score (a reference does not vote for itself), or None with too few voters."""
    from mirage3d.poses.facing import fit_front

    ref = _reference_sample(votes, cfg)
    if len(ref) < 2 or len(np.unique(votes[ref])) < 2:
        return None
    fc = cfg.facing
    front = fit_front(g, torch.as_tensor(votes[ref]), torch.as_tensor(ref), fc.front_dim, fc.front_k, fc.grid)
    position = np.full(len(g), -1, dtype=np.int64)
    position[ref] = np.arange(len(ref))
    r = front.score_sums(g, exclude=torch.as_tensor(position)).numpy()
    dm.front = front
    return r


def add_front(
    b: torch.Tensor,
    bf: torch.Tensor,
    dm: DescriptorModel,
    labels: np.ndarray,
    mirror: np.ndarray,
    d_raw: torch.Tensor,
    f_raw: torch.Tensor,
    cfg: DiscoverConfig,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray] | None:
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
class Clustering:
    """The poses of one discovery: the descriptor model, the clusters and the ring order when the scores set it."""

    dm: DescriptorModel
    mc: MirrorClusters
    facing_eta2: list[float] | None
    ring_order: list[int] | None


def cluster_poses(
    dm: DescriptorModel, d_raw: torch.Tensor, f_raw: torch.Tensor | None, pooled: Callable[[], tuple[torch.Tensor, torch.Tensor]], cfg: DiscoverConfig
) -> Clustering:
    """Poses from the raw descriptors of the images (and of their flips): the mirror-consistent clustering, then
    the facing and front/back passes when configured. ``pooled()`` gives the box-pooled features b(x), b(flip x)
    those passes need (computed only then). Fits the normalisation (and the scores) into ``dm``."""
    fit_normalisation(dm, d_raw, f_raw, cfg)
    d = dm.normalise(d_raw)
    f = dm.normalise(f_raw) if f_raw is not None else d  # no flips: f = d makes m = identity the best map
    mc = mirror_kmeans(d, f, cfg.num_poses, seed=cfg.seed, n_init=cfg.n_init)
    facing_eta2 = None
    ring_order = None
    if cfg.facing.w_facing > 0:
        if f_raw is None:
            raise InputError("the facing score needs mirror features; extract them with --flip image (or features)")
        b, bf = pooled()
        d_raw, f_raw, facing_eta2 = add_facing(b - bf, dm, mc.labels.numpy(), d_raw, f_raw, cfg)
        if dm.facing is not None:  # (None: the features hold no left/right difference; the first pass stands)
            fit_normalisation(dm, d_raw, f_raw, cfg)
            d, f = dm.normalise(d_raw), dm.normalise(f_raw)
            # With the front/back step, no pose may be its own mirror yet: the front and back views (facing ≈ 0)
            # must land in one mirror pair, which add_front splits into two self-mirror poses. A free mirror map
            # sometimes made the front/back views one self-mirror pose, and the split was skipped (docs/poses.md).
            max_fixed = 0 if cfg.facing.front else None
            mc = mirror_kmeans(d, f, cfg.num_poses, seed=cfg.seed, n_init=cfg.n_init, max_fixed=max_fixed)
            split = add_front(b, bf, dm, mc.labels.numpy(), mc.mirror, d_raw, f_raw, cfg) if cfg.facing.front else None
            if split is not None:
                d_raw, f_raw, split_labels, split_mirror = split
                fit_normalisation(dm, d_raw, f_raw, cfg)
                d, f = dm.normalise(d_raw), dm.normalise(f_raw)
                # The split poses as they are (centres and costs recomputed with the front column); clustering again
                # from the split was measured worse (docs/poses.md).
                mc = clusters_from_labels(d, f, split_labels, split_mirror)
                # the last two descriptor columns: the facing score, then the front score add_front appended
                ring_order = score_order(mc.labels.numpy(), d_raw[:, -2].numpy(), d_raw[:, -1].numpy(), cfg.num_poses)
        del b, bf
    if f_raw is None:
        mc.mirror = np.arange(cfg.num_poses)
    return Clustering(dm, mc, facing_eta2, ring_order)


def poses_by_object(
    cache: FeatureCache, collection: Path, dm: DescriptorModel, d_raw: torch.Tensor, f_raw: torch.Tensor | None, cfg: DiscoverConfig
) -> tuple[Clustering, Ring, dict]:
    """The poses of each object's ring of views (``mirage3d.poses.rings``); the descriptors of the images only make
    the pose centres (the pose model). Returns the clustering, the ring and what to record."""
    from PIL import Image

    from mirage3d.data.objects import read_objects
    from mirage3d.poses.rings import ring_poses, view_descriptors

    obj = read_objects(collection, list(cache.files))

    def image(i: int) -> np.ndarray:
        with Image.open(collection / cache.files[i]) as im:
            return np.asarray(im.convert("RGBA"))

    rp = ring_poses(*view_descriptors(map(image, range(len(cache.files)))), obj, cfg.num_poses, image)
    fit_normalisation(dm, d_raw, f_raw, cfg)
    d = dm.normalise(d_raw)
    mc = clusters_from_labels(d, dm.normalise(f_raw) if f_raw is not None else d, rp.labels, rp.mirror)
    ring = Ring(list(range(cfg.num_poses)), rp.azimuth_deg, 0.0, 0.0)
    record = {"by_object": {"objects": len(rp.choices), "angle_deg": [round(float(a), 2) for a in rp.angle_deg]}}
    return Clustering(dm, mc, None, ring.order), ring, record


def discover_poses(
    cache: FeatureCache,
    collection: str | Path,
    out: str | Path,
    cfg: DiscoverConfig | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PoseSet:
    """Discover ``cfg.num_poses`` poses in the cached collection and write the poses folder ``out``."""
    from mirage3d.devices import resolve_device

    cfg = cfg or DiscoverConfig()
    check_discovery_input(cache.num_images, cfg, cache.flip)
    collection = Path(collection)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dm = fit_descriptor_model(cache, cfg, device)
    d_raw, f_raw = compute_descriptors(cache, dm, device, progress)
    k = cfg.num_poses
    if cfg.by_object:
        run, ring, by_object = poses_by_object(cache, collection, dm, d_raw, f_raw, cfg)
    else:
        run = cluster_poses(dm, d_raw, f_raw, lambda: pooled_pairs(cache, dm, device, cfg.facing.grid), cfg)
        counts = np.bincount(run.mc.labels.numpy(), minlength=k)
        dist = torch.cdist(run.mc.centres.double(), run.mc.centres.double()).numpy()
        ring = ring_azimuths(dist, run.mc.mirror, counts if cfg.cameras.spacing == "sizes" else None, order=run.ring_order)
        by_object = {}
    dm, mc = run.dm, run.mc

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

    record = {
        "ring_order": [int(inv[o]) for o in ring.order],
        "flip_agreement": mc.flip_agreement,
        # share of the images that the saved model (nearest centre) assigns as labelled here: < 1 when the
        # front/back split is kept as it is
        "assign_agreement": float((mc.cost.argmin(1) == mc.labels).float().mean()),
        "mirror_residual_deg": ring.mirror_residual_deg,
        "objective": mc.objective,
        **({} if run.facing_eta2 is None else {"facing_eta2": [round(x, 5) for x in run.facing_eta2], "facing_used": dm.facing is not None}),
        **({} if not cfg.facing.front else {"front_used": dm.front is not None}),
        **by_object,
    }
    poses = PoseSet(list(cache.files), labels, mirror, confidence, azimuth, record, Path(out))
    model = PoseModel(
        cache.backbone, dm.to("cpu"), centres, mirror, cache.flip, temperature, extra={"grid": list(cache.grid), "image_size": cache.image_size}
    )
    cameras = make_cameras(azimuth, _image_res(collection, cache), cfg.cameras)
    files = [collection / p for p in cache.files]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        poses.save(tmp)
        write_cameras(tmp, cameras)
        model.save(tmp)
        save_config(cfg, tmp / "config.json", features=str(cache.folder), collection=str(collection.resolve()), backbone=cache.backbone)
        pose_sheet(files, labels, confidence, azimuth, cfg.sheet_per_pose).save(tmp / "poses_sheet.png")
        _write_parts_image(tmp / "parts.png", cache, dm, files, labels, confidence, device)
    return poses


def _image_res(collection: Path, cache: FeatureCache) -> int:
    from PIL import Image

    with Image.open(collection / cache.files[0]) as im:
        return int(max(im.size))


def _write_parts_image(
    path: Path, cache: FeatureCache, dm: DescriptorModel, files: list[Path], labels: np.ndarray, confidence: np.ndarray, device: torch.device
) -> None:
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
    parts_sheet([files[i] for i in picks], pm.assign(feats).cpu().numpy(), fg.cpu().numpy(), pm.num_parts).save(path)
