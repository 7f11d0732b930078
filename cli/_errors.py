"""The command-line contract: bad input gets one line ``error: ...`` on stderr and exit code 1.

- Expected errors (:class:`~mirage3d.errors.MirageError`, and ``OSError``: a full disk, a permission) become one
  line; anything else is a bug and keeps its traceback. ``MIRAGE3D_DEBUG=1`` shows tracebacks of all of them.
- Command-line usage errors (a missing argument, ``--steps abc``, a value outside an option's range) are
  reported the same way, through :class:`MirageGroup`, instead of Click's multi-line box and exit code 2.
- Every float option must be finite (``--guidance nan`` is refused), checked once here for all commands.
- Warnings logged while a command runs are held back and printed after it succeeds; when it fails, its
  one error line is all that is printed.
- SIGTERM unwinds like Ctrl-C (exit 143 instead of 130): temporary outputs are removed either way.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

# typer 0.29 (pinned) vendors Click as typer._click and does not re-export its usage errors or its context.
from typer._click import exceptions as click_exc
from typer._click.globals import get_current_context
from typer.core import TyperGroup

from mirage3d.errors import INTERRUPTED, TERMINATED, InputError, MirageError, Terminated, one_line, raise_if_terminated

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False)

# Exceptions that are the user's (or the machine's) to fix: report in one line. Anything else is a bug: traceback.
_EXPECTED: tuple[type[BaseException], ...] = (MirageError, OSError)


def debug_enabled() -> bool:
    return os.environ.get("MIRAGE3D_DEBUG", "").lower() not in ("", "0", "false", "no")


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")


class _HeldWarnings(logging.Handler):
    """Collects WARNING records while a command runs (printed after it succeeds, dropped if it fails)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _option_name(name: str) -> str:
    """The flag of parameter ``name`` in the running command (``num_poses`` → ``--poses``)."""
    ctx = get_current_context(silent=True)
    for p in ctx.command.params if ctx is not None else []:
        if p.name == name and getattr(p, "param_type_name", "") == "option":
            return max(p.opts, key=len)
    return "--" + name.replace("_", "-")


def _check_finite(kwargs: dict[str, Any]) -> None:
    for name, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{_option_name(name)} {value} is not a finite number; give a number such as 1.5")


def handle_errors(fn: F | None = None, *, hold_warnings: bool = True) -> Any:
    """Decorator for Typer commands: expected errors → 'error: …' on stderr, exit 1 (see the module docstring).

    ``hold_warnings=False`` for long-lived commands (``serve``) whose log is printed as it happens.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            held = _HeldWarnings() if hold_warnings else None
            root = logging.getLogger()
            if held is not None:
                root.addHandler(held)
                logging.captureWarnings(True)  # warnings.warn → the "py.warnings" logger → held too
            ok = False
            try:
                _check_finite(kwargs)
                result = fn(*args, **kwargs)
                raise_if_terminated()  # a handler's exception was swallowed somewhere: still a stopped run
                ok = True
                return result
            except typer.Exit:
                raise
            except BaseException as e:
                # A signal's exception may arrive wrapped (ctypes.ArgumentError when it lands inside a ctypes
                # call's argument conversion): the handlers' flags say a signal stopped the run, whatever the type.
                if isinstance(e, Terminated) or TERMINATED.is_set():
                    err_console.print("[red]terminated[/red]: outputs already written are complete; partial ones were removed")
                    raise typer.Exit(143) from None
                if isinstance(e, KeyboardInterrupt) or INTERRUPTED.is_set():
                    err_console.print("[red]interrupted[/red]: outputs already written are complete; partial ones were removed")
                    raise typer.Exit(130) from None
                if debug_enabled() or not isinstance(e, (*_EXPECTED, MemoryError)):
                    raise  # a bug (or debugging): the traceback
                print_error(one_line(e) if isinstance(e, _EXPECTED) else "out of memory; lower --batch-size or --res")
                raise typer.Exit(1) from None
            finally:
                if held is not None:
                    root.removeHandler(held)
                    logging.captureWarnings(False)
                    if ok:  # each message once (a worker may repeat what the main process said)
                        for message in dict.fromkeys(r.getMessage() for r in held.records):
                            err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def fail(message: str) -> None:
    """Stop a command with a one-line error (for checks done in the CLI layer)."""
    print_error(message)
    raise typer.Exit(1)


def _raise_interrupted(signum: int, frame: Any) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt()


def _raise_terminated(signum: int, frame: Any) -> None:
    if os.getpid() != _MAIN_PID[0]:  # a forked child (a data loader worker): die as SIGTERM means
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    TERMINATED.set()
    raise Terminated()


_MAIN_PID = [os.getpid()]


class MirageGroup(TyperGroup):
    """The root command group: usage errors in one line (exit 1), SIGTERM as an interrupt."""

    def main(
        self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, standalone_mode: bool = True, **extra: Any
    ) -> Any:
        previous = previous_int = None
        if threading.current_thread() is threading.main_thread():
            _MAIN_PID[0] = os.getpid()
            TERMINATED.clear()
            INTERRUPTED.clear()
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not where SIGINT is ignored)
                previous_int = signal.signal(signal.SIGINT, _raise_interrupted)
        try:
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click_exc.NoArgsIsHelpError:
                rv = 2  # (Typer has printed the help)
            except click_exc.UsageError as e:
                hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
                print_error(e.format_message().replace("\n", " ") + hint)
                rv = 1
            except click_exc.ClickException as e:
                print_error(e.format_message().replace("\n", " "))
                rv = 1
            except typer.Abort:
                rv = 130
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)
        code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)
