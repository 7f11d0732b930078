"""``mirage3d serve``: a long-lived make-asset process, and the client ``make-asset --server`` uses.

A ``make-asset`` command spends much of its time before any work starts: importing torch, diffusers and the
mesh libraries, and loading the model (docs/asset.md: 13-19 s of imports on the GPU machine, against 11-13 s
of work). ``mirage3d serve`` pays that once; the server keeps the model loaded and runs one photo at a time.
``mirage3d make-asset IMAGE -o OUT --server URL`` (or ``MIRAGE3D_SERVER=URL``) then imports no torch: it checks
its inputs, sends the photo and its options, and writes the files it gets back beside OUT, atomically
(the client: ``mirage3d/serve_client.py``).

Protocol (HTTP/1.1, the standard library's threading server: health checks answer at once, while make-asset
jobs queue on a lock and run one at a time, as the GPU would anyway):
- ``GET /health`` → ``{"status": "ok", "model": NAME, "model_id": ..., "device": ..., "poses": K, "served": N}``.
- ``POST /make-asset?name=car.glb&views.num_inference_steps=50&...`` (the options: :data:`CLIENT_OPTIONS`) with the image file as the body → ``{"result": {...},
  "files": {name: base64}}``: the mesh and its sidecar files (``name.config.json``, ``name.make-asset.json``,
  previews, OBJ material and texture), named after ``name`` so that references between them hold.
  Errors the user can fix → 400 ``{"error": "one line"}``; anything else → 500 with a one-line summary (the
  traceback goes to the server's log). Messages never show the server's paths.

What the server accepts and refuses (docs/reliability.md): only its loopback names in ``Host`` and no foreign
``Origin`` (a web page cannot drive it by DNS rebinding); with an access token (required to listen beyond
loopback) every request must carry ``Authorization: Bearer TOKEN``; at most :data:`MAX_REQUESTS` make-asset
requests at once (503 beyond), bodies up to :data:`MAX_BODY_BYTES` (413 beyond), streamed to disk; every option
and the image are checked before a job runs; a job whose client has gone is dropped at the next stage.
The server serves the one model it was started with; it never reads or writes paths sent by a client.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import select
import shutil
import socket
import tempfile
import threading
import time
import typing
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mirage3d.asset import MESH_SUFFIXES, AssetConfig
from mirage3d.config import config_fields, replace_fields
from mirage3d.errors import InputError, MirageError, one_line

log = logging.getLogger("mirage3d.serve")

MAX_BODY_BYTES = 64 * 1024 * 1024  # the largest photo accepted (load_image's own pixel limits apply after)
MAX_REQUESTS = 4  # make-asset requests held at once (one runs, the others wait); more get 503 at once
# AssetConfig fields that are the server's, not a client's: its model, its device and CPU threads, and the mesh
# format (the output name's suffix decides it).
SERVER_OWNED = ("model", "views.device", "recon.device", "recon.cpu_threads", "recon.format")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _client_option_types() -> dict[str, type]:
    """The AssetConfig fields a client may set, by dotted path (``views.num_inference_steps``, ``recon.iters``,
    ``num_views``), with their types (``int | None`` → int): every field of a plain type but the server's own."""
    out: dict[str, type] = {}
    for path, hint in config_fields(AssetConfig).items():
        kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
        if path not in SERVER_OWNED and len(kinds) == 1 and kinds[0] in (int, float, bool, str):
            out[path] = kinds[0]
    return out


CLIENT_OPTIONS: dict[str, type] = _client_option_types()


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise InputError(f"{text!r} is not a boolean")


def check_name(name: str) -> str:
    """A plain mesh file name (letters, digits, ``._-``; at most 100 characters; .glb/.obj/.ply)."""
    if not _NAME.match(name) or Path(name).suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"bad output name {name[:40]!r}: give a plain file name such as car.glb (letters, digits, '._-', at most 100 characters)")
    return name


def options_from_query(query: dict[str, list[str]]) -> tuple[str, dict[str, Any]]:
    """The output file name and the AssetConfig options of a request's query string (one-line errors)."""
    name = check_name((query.get("name") or [""])[0])
    opts: dict[str, Any] = {}
    for key, values in query.items():
        if key == "name":
            continue
        if key not in CLIENT_OPTIONS:
            raise InputError(
                f"unknown option {key[:40]!r}; the server takes AssetConfig's fields by dotted name (num_views, views.num_inference_steps, "
                f"recon.iters, ...), except {', '.join(SERVER_OWNED)}"
            )
        kind = CLIENT_OPTIONS[key]
        try:
            opts[key] = _parse_bool(values[0]) if kind is bool else kind(values[0])
        except ValueError:
            raise InputError(f"option {key}={values[0][:40]!r} is not a valid {kind.__name__}") from None
        if kind is float and not math.isfinite(opts[key]):
            raise InputError(f"option {key}={values[0][:40]!r} is not a finite number")
    return name, opts


def _scrub(message: str, known: dict[str, str]) -> str:
    """``message`` without the server's paths: known ones by a name, any other absolute path by its last part."""
    for path, name in sorted(known.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    return re.sub(r"(?<![\w.])/(?:[^\s'\"/]+/)+([^\s'\"/]*)", r"\1", message)


def _model_id(folder: Path) -> str:
    """What /health says the served model is, without its path: a hash of the resolved folder."""
    return hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]


class ClientGone(Exception):
    """The client of a make-asset request closed its connection: the job is dropped."""


def _client_gone(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def resolve_listen_address(host: str, port: int, token: str | None) -> tuple[int, bool]:
    """The address family to listen with and whether ``host`` is loopback only; one-line errors for a host that
    does not resolve, a port out of range, and a non-loopback host without an access token."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} must be in 0..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(f"--host {host!r} is not a name or address of this machine ({getattr(e, 'strerror', None) or e}); use 127.0.0.1") from None
    loopback = all(ipaddress.ip_address(ai[4][0].split("%")[0]).is_loopback for ai in infos)
    if not loopback and not token:
        raise InputError(
            f"--host {host} lets other machines reach the server: also give an access token (MIRAGE3D_TOKEN=... or --token) "
            "that their requests must carry, or keep the default --host 127.0.0.1"
        )
    return infos[0][0], loopback


class AssetServer(ThreadingHTTPServer):
    """An HTTP server holding one loaded model; :meth:`run` is ``make_asset`` on it (one job at a time)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: str, device: str = "auto", token: str | None = None, max_requests: int = MAX_REQUESTS):
        from mirage3d.asset import resolve_model
        from mirage3d.devices import resolve_device

        self.address_family, self.loopback = resolve_listen_address(address[0], address[1], token)
        self.model_dir = resolve_model(model)
        self.device = str(resolve_device(device))
        self.base = replace_fields(AssetConfig(model=str(self.model_dir)), {"views.device": self.device, "recon.device": self.device})
        self.token = token or None
        self.num_poses: int | None = None
        self.served = 0
        self.last_active = time.monotonic()  # for --idle-exit: when a request last started or ended
        self.active = 0  # requests in progress (under active_lock)
        self.active_lock = threading.Lock()
        self.lock = threading.Lock()  # one job at a time
        self.slots = threading.BoundedSemaphore(max_requests)  # requests held at once
        try:
            super().__init__(address, AssetHandler)
        except OSError as e:
            hint = {
                errno.EADDRINUSE: "the port is in use; choose another --port",
                errno.EADDRNOTAVAIL: f"{address[0]} is not an address of this machine; use 127.0.0.1",
                errno.EACCES: "ports below 1024 need root; choose another --port",
            }.get(e.errno or 0, "choose another --host or --port")
            raise InputError(f"cannot listen on {address[0]}:{address[1]} ({e.strerror or e}); {hint}") from None

    @property
    def info(self) -> dict[str, Any]:
        """What ``GET /health`` answers (no paths)."""
        return {
            "status": "ok",
            "model": self.model_dir.name,
            "model_id": _model_id(self.model_dir),
            "device": self.device,
            "poses": self.num_poses,
            "served": self.served,
            "pid": os.getpid(),
        }

    def load(self) -> float:
        """Import everything and load the model now, not at the first request; returns the seconds taken."""
        from mirage3d.diffusion.views import keep_models_loaded, load_model
        from mirage3d.recon import reconstruct  # noqa: F401  (imported now so the first request does not pay for it)

        t = time.perf_counter()
        keep_models_loaded()
        # With its pose model when it has one (it then serves requests with and without --pose alike).
        pipe = load_model(self.model_dir, self.device, need_pose_model=(self.model_dir / "poses" / "pose_model.json").exists())
        self.num_poses = None if pipe.cameras is None else len(pipe.cameras)
        return time.perf_counter() - t

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):  # a client that went away: one line, no traceback
            log.info("%s: connection closed (%s)", client_address[0], type(e).__name__)
        else:
            super().handle_error(request, client_address)

    def run(self, image: Path, name: str, opts: dict[str, Any], gone: Any = lambda: False) -> dict[str, Any]:
        """make-asset on the uploaded ``image`` (a file in a private temp folder); everything is checked before the
        job waits for the model. ``gone()`` says whether the client has left (the job is then dropped)."""
        from mirage3d.asset import check_asset_config, check_asset_inputs, make_asset

        cfg = replace_fields(self.base, opts)
        out = image.parent / "out" / name
        known = {
            str(image): "the uploaded image",
            str(out): name,
            str(out.parent): "",
            str(self.model_dir.resolve()): self.model_dir.name,
            str(self.model_dir): self.model_dir.name,
        }
        try:
            check_asset_config(cfg, self.num_poses)
            check_asset_inputs(image, out)
            out.parent.mkdir()
            while not self.lock.acquire(timeout=0.5):  # queued: drop the job if its client leaves meanwhile
                if gone():
                    raise ClientGone()
            try:
                if gone():
                    raise ClientGone()

                def stage(_name: str) -> None:
                    if gone():
                        raise ClientGone()

                res = make_asset(image, out, cfg, stage=stage)
                self.served += 1
            finally:
                self.lock.release()
        except MirageError as e:
            raise type(e)(_scrub(one_line(e), known)) from None
        files = {p.name: base64.b64encode(p.read_bytes()).decode("ascii") for p in sorted(out.parent.iterdir()) if p.is_file()}
        result = {"reference_pose": res.reference_pose, "pose_confidence": res.pose_confidence, "poses": res.poses, "timings": res.timings}
        return {"result": result, "files": files}


def _host_name(value: str) -> str:
    """The name in a Host header or an Origin's netloc (``[::1]:8765`` → ``::1``), lower case."""
    host = value.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AssetHandler(BaseHTTPRequestHandler):
    server: AssetServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a client may stall while sending

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except (ConnectionError, TimeoutError):
            log.info("%s: client went away before the answer", self.client_address[0])
            self.close_connection = True

    def _refused(self) -> bool:
        """Answer and return True when the request must not be served: a foreign Host or Origin, no token."""
        srv = self.server
        origin = self.headers.get("Origin")
        if origin is not None and _host_name(urllib.parse.urlsplit(origin).netloc) not in LOOPBACK_NAMES:
            self._send(403, {"error": "requests from web pages are refused (foreign Origin)"})
            return True
        if srv.loopback and _host_name(self.headers.get("Host", "")) not in LOOPBACK_NAMES:
            self._send(403, {"error": "this server answers only on its loopback name (Host must be 127.0.0.1, localhost or [::1])"})
            return True
        if srv.token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {srv.token}".encode()):
                self._send(401, {"error": "this server needs its access token: set MIRAGE3D_TOKEN to the token it was started with"})
                return True
        return False

    def do_GET(self) -> None:  # (http.server's naming)
        if self._refused():
            return
        if urllib.parse.urlsplit(self.path).path != "/health":
            self._send(404, {"error": "no such endpoint; use GET /health or POST /make-asset"})
            return
        self._send(200, self.server.info)

    def do_POST(self) -> None:
        if self._refused():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/make-asset":
            self._send(404, {"error": "no such endpoint; use POST /make-asset"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._send(
                413 if length > MAX_BODY_BYTES else 400,
                {"error": f"the request body must be the image file (1 byte to {MAX_BODY_BYTES // 2**20} MiB), got Content-Length {length}"},
            )
            return
        try:  # checked before the body is read: a bad request costs nothing
            name, opts = options_from_query(urllib.parse.parse_qs(url.query, keep_blank_values=True))
        except MirageError as e:
            self._send(400, {"error": one_line(e)})
            return
        if not self.server.slots.acquire(blocking=False):
            self._send(503, {"error": f"the server is busy ({MAX_REQUESTS} requests in progress); try again later"})
            return
        work = Path(tempfile.mkdtemp(prefix="mirage3d-serve-"))
        with self.server.active_lock:
            self.server.active += 1
            self.server.last_active = time.monotonic()
        try:
            image = work / "input"
            with image.open("wb") as fh:  # streamed to disk: the body never sits in memory
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionError("the client closed the connection while sending")
                    fh.write(chunk)
                    left -= len(chunk)
            reply = self.server.run(image, name, opts, gone=lambda: _client_gone(self.connection))
            self._send(200, reply)
        except ClientGone:
            log.info("%s: client went away; job dropped", self.client_address[0])
            self.close_connection = True
        except (ConnectionError, TimeoutError) as e:
            log.info("%s: %s", self.client_address[0], e)
            self.close_connection = True
        except MirageError as e:
            self._send(400, {"error": one_line(e)})
        except Exception as e:  # a bug: keep serving, log the traceback, tell the client in one line (no paths)
            log.exception("make-asset failed")
            self._send(500, {"error": f"internal error in the server ({type(e).__name__}); see its log"})
        finally:
            with self.server.active_lock:
                self.server.active -= 1
                self.server.last_active = time.monotonic()
            self.server.slots.release()
            shutil.rmtree(work, ignore_errors=True)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    device: str = "auto",
    on_ready: Any = None,
    token: str | None = None,
    idle_exit_minutes: float = 0.0,
) -> None:
    """Run the server until interrupted (``on_ready(server, seconds_to_load)`` is called once it listens), or,
    with ``idle_exit_minutes`` > 0, until no request has been in progress for that long."""
    server = AssetServer((host, port), model, device, token=token)
    try:
        seconds = server.load()
        if on_ready is not None:
            on_ready(server, seconds)
        if idle_exit_minutes > 0:
            server.last_active = time.monotonic()  # idle from now, not from before the model loaded
            threading.Thread(target=_stop_when_idle, args=(server, idle_exit_minutes * 60.0), daemon=True).start()
        server.serve_forever(poll_interval=0.25)
    finally:
        server.server_close()


def _stop_when_idle(server: AssetServer, seconds: float) -> None:
    """Shut ``server`` down once no request has been in progress for ``seconds`` (a started-on-demand server)."""
    while True:
        time.sleep(min(1.0, seconds / 4))
        with server.active_lock:
            idle = server.active == 0 and time.monotonic() - server.last_active > seconds
        if idle:
            log.info("no request for %.0f s: stopping", seconds)
            server.shutdown()
            return


__all__ = ["AssetServer", "CLIENT_OPTIONS", "check_name", "options_from_query", "serve"]
