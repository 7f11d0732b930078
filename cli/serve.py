"""``mirage3d serve``: keep a model loaded and answer ``make-asset --server`` requests."""

from __future__ import annotations

import logging

import typer

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import DEVICE

TOKEN_HELP = "Access token that requests must carry (needed with a --host other than loopback); better given as MIRAGE3D_TOKEN, out of `ps`."


@handle_errors(hold_warnings=False)
def serve(
    model: str = typer.Option("default", "--model", "-m", help="Model folder from `mirage3d train`, or 'default' (the shipped car model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (127.0.0.1: this machine only; others need --token)."),
    port: int = typer.Option(8765, "--port", help="TCP port (0: any free port, printed at start)."),
    device: str = DEVICE,
    token: str | None = typer.Option(None, "--token", envvar="MIRAGE3D_TOKEN", show_envvar=False, help=TOKEN_HELP),
    idle_exit: float = typer.Option(0.0, "--idle-exit", help="Stop after this many minutes without a request (0: run until stopped)."),
) -> None:
    """Serve make-asset from one loaded model: `mirage3d make-asset IMAGE -o OUT --server http://HOST:PORT`."""
    from mirage3d.serve import serve as run

    # The server's log (one line per request) on stderr, for this command only (not the root logger's setup).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("mirage3d.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def ready(server, seconds: float) -> None:
        h, p = server.server_address[:2]
        url = f"http://{'[' + h + ']' if ':' in h else h}:{p}"
        console.print(
            f"serving {server.model_dir} on {server.device} at [bold]{url}[/bold] (loaded in {seconds:.1f} s); "
            f"use `mirage3d make-asset IMAGE -o OUT --server {url}`{' with MIRAGE3D_TOKEN set' if token else ''}; Ctrl-C stops",
            soft_wrap=True,
        )

    try:
        if idle_exit < 0:
            from mirage3d.errors import InputError

            raise InputError(f"--idle-exit {idle_exit} must be 0 (never) or a number of minutes")
        run(model, host, port, device, on_ready=ready, token=token, idle_exit_minutes=idle_exit)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        log.removeHandler(handler)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
