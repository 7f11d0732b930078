"""The wheel (non-editable install) carries cli/ and recon/ as mirage3d.cli / mirage3d.recon."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_cli_and_recon_into_mirage3d(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheels = list(tmp_path.glob("mirage3d-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert "mirage3d/cli/main.py" in names
    assert "mirage3d/recon/__init__.py" in names
    assert "mirage3d/io.py" in names
    # nothing leaks out under a second top-level import name
    tops = {n.split("/")[0] for n in names if not n.startswith("mirage3d-")}
    assert tops == {"mirage3d"}
    # every Python file of the source tree is in the wheel (catches a subpackage missing from pyproject)
    for src_root, prefix in ((ROOT / "mirage3d", "mirage3d"), (ROOT / "cli", "mirage3d/cli"), (ROOT / "recon", "mirage3d/recon")):
        for py in src_root.rglob("*.py"):
            rel = f"{prefix}/{py.relative_to(src_root).as_posix()}"
            assert rel in names, f"{rel} missing from the wheel: add its package to pyproject.toml"
    # non-editable install works too: import from the unpacked wheel alone
    site = tmp_path / "site"
    zipfile.ZipFile(wheels[0]).extractall(site)
    code = "import mirage3d.cli._errors, mirage3d.io, mirage3d.recon, mirage3d; print(mirage3d.__file__)"
    r = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(site) in r.stdout
