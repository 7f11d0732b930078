"""``mirage3d serve``: keep a model loaded and answer ``make-asset --server`` requests."""

from __future__ import annotations

import logging

import typer

from mirage3d.cli._errors import console, handle_errors


@handle_errors
def serve(
    model: str = typer.Option("default", "--model", "-m", help="Model folder from `mirage3d train`, or 'default' (the shipped car model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8765, "--port", help="TCP port (0: any free port, printed at start)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Serve make-asset from one loaded model: `mirage3d make-asset IMAGE -o OUT --server http://HOST:PORT`."""
    from mirage3d.errors import InputError
    from mirage3d.serve import serve as run

    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} must be in 0..65535")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def ready(server, seconds: float) -> None:  # noqa: ANN001
        h, p = server.server_address[:2]
        console.print(f"serving {server.model_dir} on {server.device} at [bold]http://{h}:{p}[/bold] (loaded in {seconds:.1f} s); "
                      f"use `mirage3d make-asset IMAGE -o OUT --server http://{h}:{p}`; Ctrl-C stops", soft_wrap=True)  # fmt: skip

    try:
        run(model, host, port, device, on_ready=ready)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    except KeyboardInterrupt:
        console.print("stopped")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
