"""Test setup: offline hub, headless EGL rendering, deterministic CPU threads."""

from __future__ import annotations

import os

# Set before any test imports transformers / pyrender.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")
os.environ.setdefault("MIRAGE3D_DEBUG", "0")
os.environ["MIRAGE3D_LOCAL_SERVER"] = ""  # make-asset never hands a test's work to a server the developer runs

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: its tiny models gain nothing from a second thread, and on a busy
    2-core machine OpenMP threads spin (measured 2-5x slower with two). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
