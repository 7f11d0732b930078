"""Reading an image collection for the unsupervised stages (training, features, pose discovery).

A collection is a folder of images (``COLLECTION/images/*.png`` as written by ``mirage3d data render``,
or any folder of PNG/JPEG files). Only the pixels are read here: ``ground_truth.jsonl`` is for evaluation
and is never opened by this module (``objects.json``, which images show one object, is read by
``mirage3d.data.objects``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mirage3d.io import composite_on_white, list_images, load_image, rgba_to_array


def load_model_image(path: Path, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Load one collection image at ``res``×``res``: RGB on white (H, W, 3) and alpha (H, W), floats in [0, 1].

    Non-square images are padded with transparent pixels to a square first (collections rendered by
    mirage3d are already square and centred).
    """
    im = load_image(path)
    w, h = im.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    if im.size != (res, res):
        im = im.resize((res, res), Image.Resampling.BICUBIC if im.size[0] < res else Image.Resampling.LANCZOS)
    rgba = rgba_to_array(im)
    return composite_on_white(rgba), rgba[..., 3]


class ImageCollection(Dataset):
    """Torch dataset of a collection: ``pixel_values`` (3, res, res) in [-1, 1], ``mask`` (1, res, res), ``index``.

    ``labels`` (optional, one int per image) are returned as ``label``.
    """

    def __init__(self, folder: str | Path, res: int, labels: np.ndarray | None = None, files: list[Path] | None = None):
        self.folder = Path(folder)
        self.files = files if files is not None else list_images(self.folder)
        self.res = int(res)
        if labels is not None and len(labels) != len(self.files):
            raise ValueError(f"{len(labels)} labels for {len(self.files)} images")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rgb, alpha = load_model_image(self.files[i], self.res)
        item = {
            "pixel_values": torch.from_numpy(rgb).permute(2, 0, 1).mul(2.0).sub(1.0),  # (3, res, res)
            "mask": torch.from_numpy(alpha)[None],  # (1, res, res)
            "index": torch.tensor(i),
        }
        if self.labels is not None:
            item["label"] = torch.tensor(int(self.labels[i]))
        return item

    def relative_names(self) -> list[str]:
        """File names relative to the collection folder (how poses files refer to images)."""
        return [str(p.relative_to(self.folder)) for p in self.files]


def load_uint8_images(files: list[Path], res: int, workers: int = 8) -> torch.Tensor:
    """Decode ``files`` once into one uint8 tensor (N, 4, res, res): RGB composited on white, then alpha.

    Training keeps this whole tensor in memory (on the GPU when it fits) and draws batches from it, so no
    PNG is decoded per step. Decoding runs in a thread pool (PIL releases the GIL while decoding).
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(path: Path) -> np.ndarray:
        rgb, alpha = load_model_image(path, res)
        rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)  # (res, res, 4)
        return (rgba * 255.0 + 0.5).astype(np.uint8).transpose(2, 0, 1)  # (4, res, res)

    out = torch.empty((len(files), 4, res, res), dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, arr in enumerate(pool.map(one, files)):
            out[i] = torch.from_numpy(arr)
    return out
