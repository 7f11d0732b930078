"""`mirage3d serve` and `make-asset --server`: same files as a local run, one-line errors, nothing partial."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import trimesh
from test_make_asset import NUM_POSES, cutout
from test_views_cli import make_tiny_model
from typer.testing import CliRunner

from mirage3d.asset import AssetConfig
from mirage3d.cli.main import app
from mirage3d.diffusion.views import keep_models_loaded
from mirage3d.errors import InputError
from mirage3d.serve import CLIENT_OPTIONS, AssetServer, options_from_query, server_health

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--steps", "2", "--iters", "20", "--faces", "500", "--views", "2", "--pose", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serve") / "model", NUM_POSES, num_class_embeds=NUM_POSES + 1, radius=3.38, focal=22.0, size=16)


@pytest.fixture(scope="module")
def server(model_dir: Path):
    srv = AssetServer(("127.0.0.1", 0), str(model_dir), "cpu")
    srv.load()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        keep_models_loaded(False)  # later tests load models afresh


def test_client_options_are_asset_config_fields() -> None:
    types = {f.name: f.type for f in dataclasses.fields(AssetConfig)}
    for name, kind in CLIENT_OPTIONS.items():
        assert name in types and kind.__name__ in str(types[name])
    assert "model" not in CLIENT_OPTIONS and "device" not in CLIENT_OPTIONS  # the server's own


def test_query_parsing() -> None:
    name, opts = options_from_query({"name": ["car.glb"], "steps": ["50"], "preview": ["1"], "guidance_scale": ["2.5"]})
    assert name == "car.glb" and opts == {"steps": 50, "preview": True, "guidance_scale": 2.5}
    for bad, match in [({"name": ["../x.glb"]}, "bad output name"), ({"name": [".hidden.glb"]}, "bad output name"), ({}, "bad output name"),
                       ({"name": ["a.glb"], "model": ["/etc"]}, "unknown option"), ({"name": ["a.glb"], "steps": ["ten"]}, "not a valid int"),
                       ({"name": ["a.glb"], "preview": ["maybe"]}, "not a valid bool")]:  # fmt: skip
        with pytest.raises(InputError, match=match):
            options_from_query(bad)


def test_served_asset_matches_a_local_run(tmp_path: Path, model_dir: Path, server) -> None:
    srv, url = server
    image = cutout(tmp_path / "in.png")
    local = tmp_path / "local" / "car.glb"
    r = runner.invoke(app, ["make-asset", str(image), "-o", str(local), "--model", str(model_dir), "--device", "cpu", *FAST])
    assert r.exit_code == 0, r.output
    for i in range(2):  # the second request reuses the loaded model: still the same result
        remote = tmp_path / f"remote{i}" / "car.glb"
        r = runner.invoke(app, ["make-asset", str(image), "-o", str(remote), "--server", url, *FAST])
        assert r.exit_code == 0, r.output
        assert sorted(p.name for p in remote.parent.iterdir()) == ["car.glb", "car.glb.config.json", "car.glb.make-asset.json"]
        a, b = trimesh.load(local, force="mesh"), trimesh.load(remote, force="mesh")
        assert a.vertices.shape == b.vertices.shape and abs(a.vertices - b.vertices).max() < 1e-5
    assert srv.info.served == 2
    # MIRAGE3D_SERVER works as --server; an existing output needs --overwrite.
    r = runner.invoke(app, ["make-asset", str(image), "-o", str(remote), *FAST], env={"MIRAGE3D_SERVER": url})
    assert r.exit_code == 1 and "already exists" in r.stderr


def _error(result) -> str:  # noqa: ANN001
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_errors_are_one_line_and_leave_nothing(tmp_path: Path, model_dir: Path, server) -> None:
    srv, url = server
    image = cutout(tmp_path / "in.png")
    out = tmp_path / "o" / "car.glb"
    # Nothing listening.
    assert "no mirage3d server answers" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", "http://127.0.0.1:9", *FAST]))
    assert "not a server URL" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", "localhost:8765", *FAST]))
    # Checked before sending: not an image.
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert "junk.png" in _error(runner.invoke(app, ["make-asset", str(junk), "-o", str(out), "--server", url, *FAST]))
    # Refused by the server: a pose the model does not have.
    msg = _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--pose", "9", "--steps", "2"]))
    assert "refused" in msg and "pose" in msg
    # Options that cannot travel.
    assert "--keep-views" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--keep-views", str(tmp_path / "v")]))
    assert "--device" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--device", "cpu"]))
    assert "serves" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--model", str(tmp_path)]))
    assert not out.parent.exists() or not any(out.parent.iterdir())
    assert srv.info.served == 2  # (from the test above) failed requests are not counted


def test_health_answers_while_a_job_runs(server) -> None:
    srv, url = server
    with srv.lock:  # as while a make-asset job holds the model
        health = server_health(url)
    assert health["status"] == "ok" and health["device"] == "cpu" and Path(health["model"]).name == "model"


def test_serve_cli_bad_port() -> None:
    r = runner.invoke(app, ["serve", "--port", "70000"])
    assert r.exit_code == 1 and "--port" in r.stderr
    r = runner.invoke(app, ["serve", "--model", "/nonexistent/model", "--port", "0"])
    assert r.exit_code == 1 and "does not exist" in r.stderr
