"""Reference preprocessing: object mask sources, framing, errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from PIL import Image

from mirage3d.diffusion.preprocess import bbox_fraction, choose_fill, load_fill, load_framing, object_mask, prepare_reference
from mirage3d.errors import InputError


def square_rgba(h: int = 60, w: int = 80, box: tuple[int, int, int, int] = (10, 20, 30, 60)) -> np.ndarray:
    """Float RGBA with an opaque blue box (y0, x0, y1, x1) on transparency."""
    im = np.zeros((h, w, 4), np.float32)
    y0, x0, y1, x1 = box
    im[y0:y1, x0:x1] = (0.1, 0.2, 0.9, 1.0)
    return im


@pytest.mark.parametrize("fill", [0.5, 0.85])
def test_alpha_cutout_framed_to_fill(fill: float) -> None:
    p = prepare_reference(square_rgba(), 32, fill=fill)
    assert p.mask_source == "alpha" and p.bbox == (20, 10, 60, 30)
    assert p.image.shape == (32, 32, 3) and p.mask.shape == (32, 32)
    assert bbox_fraction(p.mask) == pytest.approx(fill, abs=2 / 32)
    ys, xs = np.nonzero(p.mask > 0.5)
    assert abs((xs.min() + xs.max()) / 2 - 15.5) <= 1 and abs((ys.min() + ys.max()) / 2 - 15.5) <= 1  # centred
    assert p.image[0, 0].min() > 0.99  # composited on white
    t = p.to_tensor()
    assert t.shape == (1, 3, 32, 32) and float(t.min()) >= -1 and float(t.max()) <= 1


def test_plain_background_found_and_removed() -> None:
    rgba = square_rgba()
    rgba[rgba[..., 3] == 0] = (0.5, 0.45, 0.4, 1.0)
    rgba[..., :3] += np.random.default_rng(0).normal(0, 0.01, rgba[..., :3].shape).astype(np.float32)  # sensor noise
    mask, source = object_mask(np.clip(rgba, 0, 1))
    assert source == "plain-background"
    truth = np.zeros(mask.shape, bool)
    truth[10:30, 20:60] = True
    assert ((mask > 0.5) == truth).mean() > 0.99


def busy_photo(seed: int = 1) -> np.ndarray:
    """(60, 80, 3) float: a saturated orange box (rows 18-42, columns 22-62) on grey-green noise."""
    busy = np.random.default_rng(seed).uniform(0.3, 0.7, (60, 80, 3)).astype(np.float32) * np.array([0.8, 1.0, 0.9], np.float32)
    busy[18:42, 22:62] = (0.95, 0.55, 0.1)
    return busy


def test_busy_background_without_rembg_uses_grabcut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rembg", None)  # import fails even if installed
    p = prepare_reference(busy_photo(), 16, fill=0.8, name="photo.jpg")
    assert p.mask_source == "grabcut-auto" and p.bbox == (22, 18, 62, 42)
    boxed = prepare_reference(busy_photo(), 16, fill=0.8, name="photo.jpg", box=(15, 10, 70, 50))
    assert boxed.mask_source == "grabcut-box" and boxed.bbox == (22, 18, 62, 42)
    with pytest.raises(InputError, match=r"photo.jpg: box 0,0,90,50 lies outside the 80x60 image"):
        prepare_reference(busy_photo(), 16, name="photo.jpg", box=(0, 0, 90, 50))


def test_busy_background_uses_rembg_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("rembg")

    def remove(im: Image.Image) -> Image.Image:
        a = np.zeros((im.size[1], im.size[0]), np.uint8)
        a[5:15, 5:25] = 255
        return Image.fromarray(np.dstack([np.asarray(im), a]), "RGBA")

    fake.remove = remove  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rembg", fake)
    busy = (np.random.default_rng(2).random((30, 30, 3)) * 255).astype(np.uint8)
    p = prepare_reference(busy, 16, fill=0.8)
    assert p.mask_source == "rembg" and p.bbox == (5, 5, 25, 15)


def test_keep_framing_and_errors(tmp_path) -> None:
    p = prepare_reference(square_rgba(h=40, w=40, box=(10, 10, 30, 30)), 20, fill=None)
    assert bbox_fraction(p.mask) == pytest.approx(0.5, abs=0.06)  # framing unchanged, only resized
    with pytest.raises(InputError, match="no object found"):
        prepare_reference(np.ones((30, 30, 3), np.float32), 16)
    with pytest.raises(InputError, match="fill must be"):
        prepare_reference(square_rgba(), 16, fill=1.5)
    with pytest.raises(InputError, match="image array"):
        prepare_reference(np.zeros((4, 4)), 16)
    assert load_fill(tmp_path) is None
    (tmp_path / "framing.json").write_text('{"bbox_fraction": 0.7}')
    assert load_fill(tmp_path) == 0.7
    (tmp_path / "framing.json").write_text('{"bbox_fraction": 7}')
    with pytest.raises(InputError, match="bbox_fraction"):
        load_fill(tmp_path)
    (tmp_path / "framing.json").write_text('{"bbox_fraction": 0.7, "range": [0.9, 0.5]}')
    with pytest.raises(InputError, match="range"):
        load_framing(tmp_path)
    (tmp_path / "framing.json").write_text('{"bbox_fraction": 0.7, "range": [0.5, 0.8]}')
    assert load_framing(tmp_path) == (0.7, (0.5, 0.8))


def test_choose_fill_keeps_a_scale_the_model_saw() -> None:
    """An input whose object already spans a bbox fraction inside the training range keeps it; others get the median."""
    inside = square_rgba(h=40, w=40, box=(6, 6, 34, 34))  # 28 / 40 = 0.7
    outside = square_rgba(h=40, w=40, box=(15, 15, 25, 25))  # 0.25
    assert choose_fill(inside, 0.75, (0.5, 0.8)) == pytest.approx(0.7, abs=0.03)
    assert choose_fill(outside, 0.75, (0.5, 0.8)) == 0.75
    assert choose_fill(inside, 0.75, None) == 0.75  # no range recorded: always the median
