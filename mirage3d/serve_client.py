"""The client of ``mirage3d serve``: what ``make-asset --server URL`` runs (it imports no torch).

It checks its inputs and output path before asking the server, sends the photo and its options, and writes
only the files it asked for (named after ``-o``; none replaced without ``overwrite``), each atomically, after
decoding all of them. Malformed replies (not JSON, bad base64, foreign file names) are one-line errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mirage3d.asset import AssetConfig
from mirage3d.config import config_fields, get_field
from mirage3d.errors import InputError
from mirage3d.serve import _NAME, CLIENT_OPTIONS, LOOPBACK_NAMES, _model_id, check_name


def _request(url: str, data: bytes | None = None, timeout: float = 3600.0, token: str | None = None) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    base = url.split("?")[0].rsplit("/", 1)[0]
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--server {base!r} is not a server URL; give one like http://127.0.0.1:8765")
    headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        try:
            message = str(json.loads(e.read()).get("error", e))
        except (ValueError, AttributeError):
            message = str(e)
        raise InputError(f"the server at {base} refused: {message.splitlines()[0] if message else e.code}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InputError(f"no mirage3d server answers at {base} ({reason}); start one with `mirage3d serve` or drop --server") from None
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if not isinstance(reply, dict):
        raise InputError(f"the server at {base} sent a reply that is not a JSON object; is it a mirage3d server?")
    return reply


def server_health(server: str, token: str | None = None) -> dict[str, Any]:
    return _request(server.rstrip("/") + "/health", timeout=10.0, token=token)


LOCAL_SERVER = "http://127.0.0.1:8765"  # where `mirage3d serve` listens by default


def find_local_server(model: str) -> str | None:
    """The URL of a ``mirage3d serve`` already running on this machine that holds ``model``, else None: one
    quick health request to ``MIRAGE3D_LOCAL_SERVER`` (default :data:`LOCAL_SERVER`; empty: never look).
    Nothing is started; anything that does not answer as a mirage3d server with that model is ignored."""
    url = os.environ.get("MIRAGE3D_LOCAL_SERVER", LOCAL_SERVER)
    if not url:
        return None
    try:
        health = _request(url.rstrip("/") + "/health", timeout=0.5)
        check_served_model(url, health, model)
    except InputError:
        return None
    return url if health.get("status") == "ok" else None


DAEMON_IDLE_MINUTES = 15.0  # a server make-asset starts stops after this long without a request


def start_local_server(model: str, device: str = "auto", idle_minutes: float | None = None, wait_s: float = 300.0) -> tuple[str, Path] | None:
    """Start ``mirage3d serve`` for ``model`` in the background at ``MIRAGE3D_LOCAL_SERVER`` (a loopback address,
    default :data:`LOCAL_SERVER`), detached from this command and stopping itself after ``idle_minutes`` without
    a request (as build daemons do), and wait until it answers. Returns (URL, its log file), or None when
    none could be started there (the address is not loopback, or the server stopped or did not answer in
    ``wait_s``: e.g. another program holds the port); the caller then runs the work itself."""
    import subprocess
    import sys
    import time

    idle_minutes = DAEMON_IDLE_MINUTES if idle_minutes is None else idle_minutes
    url = os.environ.get("MIRAGE3D_LOCAL_SERVER", LOCAL_SERVER)
    parts = urllib.parse.urlsplit(url)
    if not url or parts.hostname not in LOOPBACK_NAMES or parts.port is None:
        return None
    logs = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mirage3d"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"serve-{parts.port}.log"
    cmd = [sys.executable, "-m", "mirage3d.cli", "serve", "--model", model, "--device", device]
    cmd += ["--host", parts.hostname, "--port", str(parts.port), "--idle-exit", str(idle_minutes)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if find_local_server(model):  # ours, or one that another command started meanwhile
            return url, log_path
        if proc.poll() is not None:  # it stopped (the port is taken...): one more look, then give up
            return (url, log_path) if find_local_server(model) else None
        time.sleep(0.25)
    return None


def check_served_model(server: str, health: dict[str, Any], model: str) -> None:
    """Refuse when ``--model`` names another model than the one the server holds (``default``: any)."""
    if model == "default" or model == health.get("model"):
        return
    if Path(model).is_dir() and _model_id(Path(model)) == health.get("model_id"):
        return
    raise InputError(
        f"the server at {server} serves the model {health.get('model')!r}, not {model}; start one with `mirage3d serve --model {model}` or drop --server"
    )


def expected_files(output: Path, mtl: bytes | None = None) -> set[str]:
    """The file names a server may send back for ``output``: the mesh, its two records, the previews and, for an
    OBJ, its material and the textures that material names (plain image names only)."""
    n, stem = output.name, output.stem
    names = {n, f"{n}.config.json", f"{n}.make-asset.json", f"{stem}.preview.png", f"{stem}.preview.gif"}
    if output.suffix.lower() == ".obj":
        names.add(f"{stem}.mtl")
        for line in (mtl or b"").decode("utf-8", "replace").splitlines():
            parts = line.split()
            if (
                len(parts) == 2
                and parts[0].startswith("map_")
                and _NAME.match(parts[1])
                and Path(parts[1]).suffix.lower() in (".png", ".jpg", ".jpeg")
            ):
                names.add(parts[1])
    return names


def make_asset_remote(
    server: str, image: str | Path, output: str | Path, cfg: AssetConfig, overwrite: bool = False, token: str | None = None
) -> dict[str, Any]:
    """Send ``image`` and ``cfg`` to the server and write the mesh and its sidecar files beside ``output``.

    ``cfg`` travels as its :data:`CLIENT_OPTIONS` (None values are left to the server's defaults); a setting that
    cannot travel (the model and the device are the server's, a box stays here) must be at its default. The inputs
    are checked here first (same one-line errors as a local run). The reply must hold only the files named after
    ``output`` (:func:`expected_files`), none of them may exist unless ``overwrite``, and all are decoded before
    any is written; each is written atomically, the mesh last, and a failure removes the files this call wrote.
    """
    from mirage3d.asset import check_asset_config, check_asset_inputs
    from mirage3d.io import atomic_write_bytes, check_output_path

    image, output = Path(image), Path(output)
    check_asset_inputs(image, output)
    default = AssetConfig()
    kept = [p for p in config_fields(AssetConfig) if p not in CLIENT_OPTIONS and p != "model" and get_field(cfg, p) != get_field(default, p)]
    if kept:
        raise InputError(f"{', '.join(kept)} cannot be sent to a server; run without --server")
    check_asset_config(cfg)  # (its device is auto: no torch here)
    check_output_path(output, overwrite, kind="file")
    options = {p: get_field(cfg, p) for p in CLIENT_OPTIONS}
    query = {"name": check_name(output.name), **{k: (str(int(v)) if isinstance(v, bool) else str(v)) for k, v in options.items() if v is not None}}
    reply = _request(server.rstrip("/") + "/make-asset?" + urllib.parse.urlencode(query), data=image.read_bytes(), token=token)
    bad_reply = f"the server at {server} sent a malformed reply"
    files = reply.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise InputError(f"{bad_reply} (no files); is it a mirage3d server?")
    try:
        blobs = {name: base64.b64decode(data, validate=True) for name, data in files.items()}
    except (binascii.Error, ValueError):
        raise InputError(f"{bad_reply} (a file is not valid base64); is it a mirage3d server?") from None
    if output.name not in blobs:
        raise InputError(f"the server at {server} sent no {output.name}; is it a mirage3d server?")
    allowed = expected_files(output, blobs.get(f"{output.stem}.mtl"))
    foreign = sorted(set(blobs) - allowed)
    if foreign:
        raise InputError(f"the server at {server} sent a file that was not asked for ({foreign[0][:60]!r}); nothing was written")
    targets = [output.with_name(name) for name in blobs]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} already exists; pass --overwrite or choose another -o (nothing was written)")
    written: list[Path] = []
    try:
        for name in [f for f in blobs if f != output.name] + [output.name]:  # the mesh last
            target = output.with_name(name)
            atomic_write_bytes(target, blobs[name])
            written.append(target)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    result = reply.get("result")
    return {**(result if isinstance(result, dict) else {}), "files": written}
