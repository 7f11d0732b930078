"""Mapping expected exceptions to one line on stderr and exit code 1.

Full tracebacks appear only when ``MIRAGE3D_DEBUG=1`` is set (or ``--debug`` is given).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mirage3d.errors import MirageError, one_line

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False)

# Exceptions that are the user's to fix: report in one line. Anything else is a bug: traceback.
_EXPECTED: tuple[type[BaseException], ...] = (MirageError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def debug_enabled() -> bool:
    return os.environ.get("MIRAGE3D_DEBUG", "").lower() not in ("", "0", "false", "no")


def handle_errors(fn: F) -> F:
    """Decorator for Typer commands: expected errors → 'error: …' on stderr, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red]: outputs already written are complete; partial ones were removed")
            raise typer.Exit(130) from None
        except _EXPECTED as e:
            if debug_enabled():
                raise
            err_console.print(f"[bold red]error:[/bold red] {escape(one_line(e))}")
            err_console.print("[dim](set MIRAGE3D_DEBUG=1 for a traceback)[/dim]")
            raise typer.Exit(1) from None
        except MemoryError:
            if debug_enabled():
                raise
            err_console.print("[bold red]error:[/bold red] out of memory; lower --batch-size or --res")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def fail(message: str) -> None:
    """Stop a command with a one-line error (for checks done in the CLI layer)."""
    err_console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(1)


def main_guard(app: typer.Typer) -> None:
    """Run the app; used by the console script."""
    try:
        app()
    except SystemExit as e:
        sys.exit(e.code)
