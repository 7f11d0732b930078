"""The ``mirage3d`` command line: a thin shell over the library (one function call per command)."""

from __future__ import annotations

import os

# Before anything imports them: the model hubs' own warnings (an offline machine retrying a download prints
# about ten lines) would break the one-line error contract; their errors still reach the user as one line.
os.environ.setdefault("HF_HUB_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer

from mirage3d import __version__
from mirage3d.cli._errors import MirageGroup

app = typer.Typer(
    cls=MirageGroup,
    name="mirage3d",
    help="mirage3d: one photo of an object to a 3D asset, with no 3D or pose labels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mirage3d {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """mirage3d: one photo of an object to a 3D asset, with no 3D or pose labels."""


def _register() -> None:
    # Each command module adds its commands / sub-apps to `app` with a `register(app)` function.
    # Only commands that work are registered, so `mirage3d --help` lists nothing that is not real.
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"mirage3d.cli.{name}").register(app)


# One entry per command module in cli/ (keep this list sorted).
COMMAND_MODULES: list[str] = ["asset", "data", "evaluate", "features", "poses", "recon", "serve", "train", "views"]

_register()


def _close_process_group() -> None:
    # Under `accelerate launch`/`torchrun` the commands join a NCCL/gloo process group; leaving it open at exit
    # makes PyTorch warn about leaked resources on every rank, so the process group is closed here, once.
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    try:
        app()
    finally:
        _close_process_group()


if __name__ == "__main__":
    main()
