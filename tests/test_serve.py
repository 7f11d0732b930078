"""`mirage3d serve` and `make-asset --server`: same files as a local run, one-line errors, nothing partial."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trimesh
from test_make_asset import NUM_POSES, cutout
from test_views_cli import make_tiny_model
from typer.testing import CliRunner

from mirage3d.asset import AssetConfig
from mirage3d.cli.main import app
from mirage3d.config import get_field, replace_fields
from mirage3d.diffusion.views import keep_models_loaded
from mirage3d.errors import InputError
from mirage3d.serve import CLIENT_OPTIONS, MAX_BODY_BYTES, AssetServer, _client_gone, options_from_query
from mirage3d.serve_client import make_asset_remote, server_health

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
    """Derived from the nested config: every plain field of the stage configs by its dotted path, none of the server's."""
    cfg = AssetConfig()
    for path, kind in CLIENT_OPTIONS.items():
        value = get_field(cfg, path)  # the path exists
        assert value is None or isinstance(value, kind), (path, value)
    for path in ("num_views", "views.num_inference_steps", "views.consistency.rounds", "views.consistency.strength", "recon.iters", "recon.preview"):
        assert path in CLIENT_OPTIONS
    assert CLIENT_OPTIONS["views.guidance_scale"] is float and CLIENT_OPTIONS["views.reference_pose"] is int
    assert not set(CLIENT_OPTIONS) & {"model", "views.device", "recon.device", "recon.format", "views.box"}  # the server's own, or no plain type


def test_query_parsing() -> None:
    query = {"name": ["car.glb"], "views.num_inference_steps": ["50"], "recon.preview": ["1"], "views.guidance_scale": ["2.5"]}
    name, opts = options_from_query(query)
    assert name == "car.glb" and opts == {"views.num_inference_steps": 50, "recon.preview": True, "views.guidance_scale": 2.5}
    cfg = replace_fields(AssetConfig(), opts)
    assert (
        cfg.views.num_inference_steps == 50
        and cfg.recon.preview
        and cfg.views.guidance_scale == 2.5
        and AssetConfig().views.num_inference_steps == 20
    )
    for bad, match in [
        ({"name": ["../x.glb"]}, "bad output name"),
        ({"name": [".hidden.glb"]}, "bad output name"),
        ({}, "bad output name"),
        ({"name": ["a.glb"], "model": ["/etc"]}, "unknown option"),
        ({"name": ["a.glb"], "views.device": ["cuda:1"]}, "unknown option"),
        ({"name": ["a.glb"], "steps": ["20"]}, "unknown option"),
        ({"name": ["a.glb"], "views.num_inference_steps": ["ten"]}, "not a valid int"),
        ({"name": ["a.glb"], "recon.preview": ["maybe"]}, "not a valid bool"),
        ({"name": ["a\x00.glb"]}, "bad output name"),
        ({"name": ["a" * 300 + ".glb"]}, "bad output name"),
        ({"name": ["a.txt"]}, "bad output name"),
        ({"name": ["a.glb"], "views.guidance_scale": ["nan"]}, "not a finite number"),
    ]:
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
    assert srv.served == 2
    # MIRAGE3D_SERVER works as --server; an existing output needs --overwrite.
    r = runner.invoke(app, ["make-asset", str(image), "-o", str(remote), *FAST], env={"MIRAGE3D_SERVER": url})
    assert r.exit_code == 1 and "already exists" in r.stderr


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_errors_are_one_line_and_leave_nothing(tmp_path: Path, model_dir: Path, server) -> None:
    srv, url = server
    image = cutout(tmp_path / "in.png")
    out = tmp_path / "o" / "car.glb"
    # Nothing listening.
    assert "no mirage3d server answers" in _error(
        runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", "http://127.0.0.1:9", *FAST])
    )
    assert "not a server URL" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", "localhost:8765", *FAST]))
    # Checked before sending: not an image.
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert "junk.png" in _error(runner.invoke(app, ["make-asset", str(junk), "-o", str(out), "--server", url, *FAST]))
    # Refused by the server: a pose the model does not have.
    msg = _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--pose", "9", "--steps", "2"]))
    assert "refused" in msg and "pose" in msg
    # Options that cannot travel.
    assert "--keep-views" in _error(
        runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--keep-views", str(tmp_path / "v")])
    )
    assert "--device" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--device", "cpu"]))
    assert "serves" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--model", str(tmp_path)]))
    assert not out.parent.exists() or not any(out.parent.iterdir())
    assert srv.served == 2  # (from the test above) failed requests are not counted


def test_health_answers_while_a_job_runs(server) -> None:
    srv, url = server
    with srv.lock:  # as while a make-asset job holds the model
        health = server_health(url)
    assert health["status"] == "ok" and health["device"] == "cpu" and health["model"] == "model" and health["poses"] == NUM_POSES
    assert not any("/" in str(v) for v in health.values())  # no server paths


def test_serve_cli_bad_port() -> None:
    r = runner.invoke(app, ["serve", "--port", "70000"])
    assert r.exit_code == 1 and "--port" in r.stderr
    r = runner.invoke(app, ["serve", "--model", "/nonexistent/model", "--port", "0"])
    assert r.exit_code == 1 and "does not exist" in r.stderr


# --------------------------------------------------------------------------------------------------
# What the server refuses (docs/reliability.md): foreign Host/Origin, no token, too much, bad requests
# --------------------------------------------------------------------------------------------------
def _raw(url: str, method: str = "GET", path: str = "/health", headers: dict | None = None, body: bytes | None = None) -> tuple[int, dict]:
    import http.client
    import json
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_foreign_host_and_origin_are_refused_and_the_server_stays_healthy(server) -> None:
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 sends its own Host and Origin."""
    srv, url = server
    port = srv.server_address[1]
    for headers in (
        {"Host": f"evil.example:{port}"},
        {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example"},
        {"Host": f"127.0.0.1:{port}", "Origin": "null"},
    ):
        for method, path in (("GET", "/health"), ("POST", "/make-asset?name=car.glb")):
            status, payload = _raw(url, method, path, headers, b"x" if method == "POST" else None)
            assert status == 403 and "\n" not in payload["error"], (headers, payload)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert _raw(url, headers={"Host": host})[0] == 200
    assert _raw(url, headers={"Host": f"127.0.0.1:{port}", "Origin": f"http://localhost:{port}"})[0] == 200  # its own page
    assert server_health(url)["status"] == "ok"


def test_requests_are_checked_before_a_job_runs(tmp_path: Path, server) -> None:
    srv, url = server
    image = cutout(tmp_path / "in.png").read_bytes()
    served = srv.served
    for query, match in (
        ("name=a%00.glb", "bad output name"),
        ("name=" + "a" * 300 + ".glb", "bad output name"),
        ("name=a.glb&views.reference_pose=99&views.num_inference_steps=2", "--pose 99"),
        ("name=a.glb&num_views=50", "--views 50"),
        ("name=a.glb&views.num_inference_steps=0", "--steps"),
        ("name=a.glb&recon.iters=0", "--iters"),
        ("name=a.glb&views.consistency.strength=2", "--strength"),
        ("name=a.glb&model=x", "unknown option"),
    ):
        status, payload = _raw(url, "POST", "/make-asset?" + query, body=image)
        assert status == 400 and match in payload["error"], (query, payload)
    status, payload = _raw(url, "POST", "/make-asset?name=a.glb", body=b"not an image at all")
    assert status == 400 and "the uploaded image" in payload["error"] and "/tmp" not in payload["error"], payload  # no server paths
    status, payload = _raw(url, "POST", "/make-asset?name=a.glb", headers={"Content-Length": str(MAX_BODY_BYTES + 1)}, body=b"")
    assert status == 413, payload
    assert srv.served == served


def test_requests_beyond_the_bound_get_503(tmp_path: Path, server) -> None:
    srv, url = server
    taken = 0
    while srv.slots.acquire(blocking=False):  # as if that many requests were in progress
        taken += 1
    try:
        status, payload = _raw(url, "POST", "/make-asset?name=a.glb", body=cutout(tmp_path / "in.png").read_bytes())
        assert status == 503 and "busy" in payload["error"]
        assert _raw(url)[0] == 200  # health still answers
    finally:
        for _ in range(taken):
            srv.slots.release()
    assert taken >= 1


def test_an_access_token_is_required_when_set(model_dir: Path) -> None:
    srv = AssetServer(("127.0.0.1", 0), str(model_dir), "cpu", token="s3cret")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert _raw(url)[0] == 401 and _raw(url, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert server_health(url, token="s3cret")["status"] == "ok"
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(InputError, match="access token"):
        AssetServer(("0.0.0.0", 0), str(model_dir), "cpu")


def test_a_closed_client_is_seen() -> None:
    import socket

    a, b = socket.socketpair()
    assert not _client_gone(a)
    b.close()
    assert _client_gone(a)
    a.close()


# --------------------------------------------------------------------------------------------------
# The client against a fake server: it writes only what it asked for
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def fake_server():
    """A server that answers /health normally and /make-asset with ``reply["body"]`` (bytes)."""
    import base64
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    reply: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(reply.get("health", json.dumps({"status": "ok", "model": "car", "device": "cpu"}).encode()))

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(reply["body"])

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def files(**named: bytes) -> bytes:
        return json.dumps({"result": {"poses": [0, 1]}, "files": {k: base64.b64encode(v).decode() for k, v in named.items()}}).encode()

    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", reply, files
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_settings_that_stay_here_are_not_sent(tmp_path: Path) -> None:
    cfg = replace_fields(AssetConfig(), {"views.box": (2, 2, 30, 30)})
    with pytest.raises(InputError, match="views.box cannot be sent"):  # refused before any server is asked
        make_asset_remote("http://127.0.0.1:9", cutout(tmp_path / "in.png"), tmp_path / "car.glb", cfg)


def test_the_client_accepts_only_the_files_it_asked_for(tmp_path: Path, fake_server) -> None:
    url, reply, files = fake_server
    image = cutout(tmp_path / "in.png")
    out = tmp_path / "o" / "car.glb"
    out.parent.mkdir()
    (out.parent / "NOTES.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    cases = [
        (files(**{"car.glb": b"mesh", ".bashrc": b"echo owned"}), "not asked for"),
        (files(**{"car.glb": b"mesh", "NOTES.txt": b"overwritten"}), "not asked for"),
        (files(**{"car.glb": b"mesh", "..": b"x"}), "not asked for"),
        (files(**{"car.glb": b"mesh", "../car.glb": b"x"}), "not asked for"),
        (files(**{"other.glb": b"mesh"}), "sent no car.glb"),
        (b"<html>not json</html>", "not a JSON object"),
        (b'{"files": {"car.glb": "%%% not base64 %%%"}}', "not valid base64"),
        (b'{"files": ["car.glb"]}', "malformed reply"),
        (b"[1, 2]", "not a JSON object"),
    ]
    for body, match in cases:
        reply["body"] = body
        msg = _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--steps", "2"]))
        assert match in msg, (body[:60], msg)
        assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # nothing written or replaced
    # A sidecar that exists is not replaced without --overwrite (and then nothing is written at all).
    (out.parent / "car.glb.config.json").write_text("an earlier run's")
    reply["body"] = files(**{"car.glb": b"mesh", "car.glb.config.json": b"{}"})
    assert "already exists" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--steps", "2"]))
    assert not out.exists() and (out.parent / "car.glb.config.json").read_text() == "an earlier run's"
    r = runner.invoke(app, ["make-asset", str(image), "-o", str(out), "--server", url, "--steps", "2", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == b"mesh" and (out.parent / "car.glb.config.json").read_text() == "{}"
    # A health answer that is not JSON.
    reply["health"] = b"\x00\x01"
    assert "not a JSON object" in _error(runner.invoke(app, ["make-asset", str(image), "-o", str(tmp_path / "p.glb"), "--server", url]))


def test_clients_that_leave_cost_no_traceback_and_no_job(tmp_path: Path, server, capfd) -> None:
    """A client that closes while sending, or right after sending (its job is then dropped, not run)."""
    import socket
    import time

    srv, url = server
    port = srv.server_address[1]
    body = cutout(tmp_path / "in.png").read_bytes()
    served = srv.served
    for sent in (body[: len(body) // 2], body):
        s = socket.create_connection(("127.0.0.1", port))
        head = f"POST /make-asset?name=a.glb&views.num_inference_steps=2&recon.iters=20&recon.faces=500&num_views=2&views.reference_pose=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode() + sent)
        s.close()
    deadline = time.monotonic() + 60
    while srv.slots._value < 4 and time.monotonic() < deadline:  # (the handlers finish)
        time.sleep(0.1)
    assert srv.served == served and server_health(url)["status"] == "ok"
    assert "Traceback" not in capfd.readouterr().err


def test_make_asset_finds_a_running_server(tmp_path: Path, model_dir: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    from mirage3d.serve_client import find_local_server

    srv, url = server
    image = cutout(tmp_path / "in.png")
    monkeypatch.setenv("MIRAGE3D_LOCAL_SERVER", url)
    assert find_local_server("default") == url and find_local_server(str(model_dir)) == url
    assert find_local_server(str(tmp_path / "another_model")) is None  # not the served model: run here
    monkeypatch.setenv("MIRAGE3D_LOCAL_SERVER", "http://127.0.0.1:9")  # nothing listening
    assert find_local_server("default") is None
    monkeypatch.setenv("MIRAGE3D_LOCAL_SERVER", url)
    before = srv.served
    r = runner.invoke(app, ["make-asset", str(image), "-o", str(tmp_path / "a" / "car.glb"), "--model", str(model_dir), *FAST])
    assert r.exit_code == 0, r.output
    assert srv.served == before + 1 and "using the mirage3d server" in r.output
    r = runner.invoke(app, ["make-asset", str(image), "-o", str(tmp_path / "b" / "car.glb"), "--model", str(model_dir), "--local", *FAST])
    assert r.exit_code == 0, r.output
    assert srv.served == before + 1 and (tmp_path / "b" / "car.glb").exists()  # --local: done here


def test_make_asset_starts_a_server_that_stops_when_idle(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import socket
    import time

    from mirage3d import serve_client

    with socket.socket() as s:  # a free port for the server this test starts
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MIRAGE3D_LOCAL_SERVER", url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(serve_client, "DAEMON_IDLE_MINUTES", 0.25)  # 15 s
    image = cutout(tmp_path / "in.png")
    pid = None
    try:
        r = runner.invoke(app, ["make-asset", str(image), "-o", str(tmp_path / "a" / "car.glb"), "--model", str(model_dir), "--daemon", *FAST])
        assert r.exit_code == 0, r.output
        assert "started a mirage3d server" in r.output and (tmp_path / "a" / "car.glb").exists()
        health = server_health(url)
        pid = health["pid"]
        assert health["served"] == 1 and pid != os.getpid() and (tmp_path / "cache" / "mirage3d" / f"serve-{port}.log").exists()
        r = runner.invoke(app, ["make-asset", str(image), "-o", str(tmp_path / "b" / "car.glb"), "--model", str(model_dir), *FAST])
        assert r.exit_code == 0 and "using the mirage3d server" in r.output and server_health(url)["served"] == 2
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and serve_client.find_local_server("default"):
            time.sleep(0.5)
        assert serve_client.find_local_server("default") is None  # it stopped by itself once idle
        pid = None
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
