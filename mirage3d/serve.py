"""``mirage3d serve``: a long-lived make-asset process, and the client ``make-asset --server`` uses.

A ``make-asset`` command spends much of its time before any work starts: importing torch, diffusers and the
mesh libraries, and loading the model (docs/asset.md: 13-19 s of imports on the GPU machine, against 11-13 s
of work). ``mirage3d serve`` pays that once; the server keeps the model loaded and runs one photo at a time.
``mirage3d make-asset IMAGE -o OUT --server URL`` (or ``MIRAGE3D_SERVER=URL``) then imports no torch: it checks
its inputs, sends the photo and its options, and writes the files it gets back beside OUT, atomically.

Protocol (HTTP/1.1 on the loopback interface by default; the standard library's threading server: health
checks answer at once, while make-asset jobs queue on a lock and run one at a time, as the GPU would anyway):
- ``GET /health`` → ``{"status": "ok", "model": ..., "device": ..., "served": N}``.
- ``POST /make-asset?name=car.glb&steps=50&...`` with the image file as the body → ``{"result": {...},
  "files": {name: base64}}``: the mesh and its sidecar files (``name.config.json``, ``name.make-asset.json``,
  previews, OBJ material and texture), named after ``name`` so that references between them hold.
  Errors the user can fix → 400 ``{"error": "one line"}``; anything else → 500 with a one-line summary (the
  traceback goes to the server's log).
The server serves the one model it was started with; it never reads or writes paths sent by a client.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mirage3d.errors import InputError, MirageError, one_line

log = logging.getLogger("mirage3d.serve")

MAX_BODY_BYTES = 64 * 1024 * 1024  # the largest photo accepted (load_image's own pixel limits apply after)
# AssetConfig fields a client may set, with their types; the model and the device are the server's.
CLIENT_OPTIONS: dict[str, type] = {"views": int, "steps": int, "guidance_scale": float, "hard_guidance_scale": float, "reference_pose": int,
                                   "recon_iters": int, "faces": int, "preview": bool, "seed": int}  # fmt: skip


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise InputError(f"{text!r} is not a boolean")


def options_from_query(query: dict[str, list[str]]) -> tuple[str, dict[str, Any]]:
    """The output file name and the AssetConfig options of a request's query string (one-line errors)."""
    name = (query.get("name") or [""])[0]
    if not name or Path(name).name != name or name.startswith("."):
        raise InputError(f"bad output name {name!r}: give a plain file name such as car.glb")
    opts: dict[str, Any] = {}
    for key, values in query.items():
        if key == "name":
            continue
        if key not in CLIENT_OPTIONS:
            raise InputError(f"unknown option {key!r}; the server takes {', '.join(sorted(CLIENT_OPTIONS))}")
        kind = CLIENT_OPTIONS[key]
        try:
            opts[key] = _parse_bool(values[0]) if kind is bool else kind(values[0])
        except ValueError:
            raise InputError(f"option {key}={values[0]!r} is not a valid {kind.__name__}") from None
    return name, opts


@dataclass
class ServerInfo:
    model: str
    device: str
    served: int = 0


class AssetServer(ThreadingHTTPServer):
    """An HTTP server holding one loaded model; :meth:`run` is ``make_asset`` on it (one job at a time)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: str, device: str = "auto"):
        from mirage3d.asset import AssetConfig, resolve_model
        from mirage3d.devices import resolve_device

        self.model_dir = resolve_model(model)
        self.device = str(resolve_device(device))
        self.base = AssetConfig(model=str(self.model_dir), device=self.device)
        self.info = ServerInfo(str(self.model_dir), self.device)
        self.lock = threading.Lock()
        super().__init__(address, AssetHandler)

    def load(self) -> float:
        """Import everything and load the model now, not at the first request; returns the seconds taken."""
        from mirage3d.diffusion.views import keep_models_loaded, load_model
        from mirage3d.recon import reconstruct  # noqa: F401  (imported now so the first request does not pay for it)

        t = time.perf_counter()
        keep_models_loaded()
        # With its pose model when it has one (it then serves requests with and without --pose alike).
        load_model(self.model_dir, self.device, need_pose_model=(self.model_dir / "poses" / "pose_model.json").exists())
        return time.perf_counter() - t

    def run(self, image_bytes: bytes, name: str, opts: dict[str, Any]) -> dict[str, Any]:
        from dataclasses import replace

        from mirage3d.asset import make_asset

        cfg = replace(self.base, **opts)
        work = Path(tempfile.mkdtemp(prefix="mirage3d-serve-"))
        try:
            image = work / "input"
            image.write_bytes(image_bytes)
            out = work / "out" / name
            out.parent.mkdir()
            with self.lock:
                res = make_asset(image, out, cfg)
                self.info.served += 1
            files = {p.name: base64.b64encode(p.read_bytes()).decode("ascii") for p in sorted(out.parent.iterdir()) if p.is_file()}
            result = {"reference_pose": res.reference_pose, "pose_confidence": res.pose_confidence, "poses": res.poses, "timings": res.timings}
            return {"result": result, "files": files}
        finally:
            shutil.rmtree(work, ignore_errors=True)


class AssetHandler(BaseHTTPRequestHandler):
    server: AssetServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a client may stall while sending

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if urllib.parse.urlsplit(self.path).path != "/health":
            self._send(404, {"error": f"no such endpoint {self.path}; use GET /health or POST /make-asset"})
            return
        self._send(200, {"status": "ok", **self.server.info.__dict__})

    def do_POST(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/make-asset":
            self._send(404, {"error": f"no such endpoint {url.path}; use POST /make-asset"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(400, {"error": f"the request body must be the image file (1 byte to {MAX_BODY_BYTES // 2**20} MiB), got Content-Length {length}"})
            return
        body = self.rfile.read(length)
        try:
            name, opts = options_from_query(urllib.parse.parse_qs(url.query, keep_blank_values=True))
            self._send(200, self.server.run(body, name, opts))
        except (MirageError, FileNotFoundError) as e:
            self._send(400, {"error": one_line(e)})
        except Exception as e:  # a bug: keep serving, log the traceback, tell the client in one line
            log.exception("make-asset failed")
            self._send(500, {"error": f"internal error in the server ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); see its log"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------
def _request(url: str, data: bytes | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--server {url.split('?')[0].rsplit('/', 1)[0]!r} is not a server URL; give one like http://127.0.0.1:8765")
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/octet-stream"} if data is not None else {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", str(e))
        except (ValueError, AttributeError):
            message = str(e)
        raise InputError(f"the server at {url.split('?')[0]} refused: {message}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"no mirage3d server answers at {url.split('?')[0]} ({reason}); start one with `mirage3d serve` or drop --server") from None


def server_health(server: str) -> dict[str, Any]:
    return _request(server.rstrip("/") + "/health", timeout=10.0)


def make_asset_remote(server: str, image: str | Path, output: str | Path, options: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Send ``image`` to the server and write the mesh and its sidecar files beside ``output``.

    ``options``: AssetConfig fields from :data:`CLIENT_OPTIONS` (None values are left to the server's defaults).
    The inputs are checked here first (same one-line errors as a local run); each file is written atomically,
    the mesh last, and a failure removes the files this call wrote.
    """
    from mirage3d.asset import check_asset_inputs

    image, output = Path(image), Path(output)
    check_asset_inputs(image, output, options.get("views"), int(options.get("steps") or 20))
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists; pass --overwrite or choose another -o")
    unknown = set(options) - set(CLIENT_OPTIONS)
    if unknown:
        raise InputError(f"option(s) {', '.join(sorted(unknown))} cannot be sent to a server")
    query = {"name": output.name, **{k: (str(int(v)) if isinstance(v, bool) else str(v)) for k, v in options.items() if v is not None}}
    reply = _request(server.rstrip("/") + "/make-asset?" + urllib.parse.urlencode(query), data=image.read_bytes())
    files: dict[str, str] = reply.get("files", {})
    if output.name not in files:
        raise InputError(f"the server at {server} sent no {output.name}; is it a mirage3d server?")
    from mirage3d.io import atomic_write_bytes

    written: list[Path] = []
    try:
        for fname in [f for f in files if f != output.name] + [output.name]:  # the mesh last
            if Path(fname).name != fname:
                raise InputError(f"the server sent a bad file name {fname!r}")
            target = output.with_name(fname)
            atomic_write_bytes(target, base64.b64decode(files[fname]))
            written.append(target)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return {**reply.get("result", {}), "files": written}


def serve(model: str, host: str = "127.0.0.1", port: int = 8765, device: str = "auto", on_ready: Any = None) -> None:
    """Run the server until interrupted (``on_ready(server, seconds_to_load)`` is called once it listens)."""
    server = AssetServer((host, port), model, device)
    try:
        seconds = server.load()
        if on_ready is not None:
            on_ready(server, seconds)
        server.serve_forever()
    finally:
        server.server_close()


__all__ = ["AssetServer", "CLIENT_OPTIONS", "make_asset_remote", "options_from_query", "serve", "server_health"]
