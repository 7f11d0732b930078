"""Exceptions that mean "the user gave us something we cannot use".

Library code raises these with a message that names the bad value and says how to fix it; the CLI turns
them into one line on stderr and exit code 1 (a traceback only with ``MIRAGE3D_DEBUG=1``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator


class MirageError(Exception):
    """Base class of every expected, user-facing mirage3d error."""


class InputError(MirageError, ValueError):
    """A file, folder or option given by the user is missing, malformed or out of range."""


class ModelError(MirageError, ValueError):
    """A model folder is missing, incomplete or not a mirage3d model."""


class DependencyError(MirageError, ImportError):
    """An optional dependency (extra) or pretrained weights are not available here."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler so that it unwinds (and cleans up) like Ctrl-C."""


TERMINATED = threading.Event()
"""Set by the CLI's SIGTERM handler. The exception it raises can be swallowed (Python ignores exceptions
raised while a ``__del__`` or a weakref callback runs), so the atomic writers also check this before they
rename a finished output into place."""


INTERRUPTED = threading.Event()
"""Set by the CLI's SIGINT handler, for the same reason: a signal's exception raised inside a ctypes argument
conversion (PyOpenGL's, while rendering) reaches the caller as ``ctypes.ArgumentError``, not as itself."""


def raise_if_terminated() -> None:
    """Raise the signal's exception again if the CLI's SIGTERM or SIGINT handler ran and its own exception was
    swallowed on the way (atomic writers call this before they rename an output into place; long loops too)."""
    if TERMINATED.is_set():
        raise Terminated()
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    # A DataLoader worker re-raises a worker's exception as "Caught InputError in DataLoader worker process 0.
    # Original Traceback (most recent call last): ... InputError: <the message>": keep the message.
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        for p in (prefix, f"{type(e).__name__}: "):
            if last.startswith(p):
                return last[len(p) :].strip()
        return last.strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException) -> str:
    """The one-line message of an expected error (the CLI prints it; ``mirage3d serve`` sends it to the client)."""
    if isinstance(e, OSError) and not isinstance(e, MirageError) and e.filename:
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    return _first_line(e)


@contextlib.contextmanager
def loading(what: str, folder: str | os.PathLike[str], fix: str) -> Iterator[None]:
    """Turn what a damaged model folder makes the loaders raise into one :class:`ModelError`.

    Truncated or oversized safetensors (``SafetensorError``, or the ``OSError`` diffusers wraps it in), a
    ``config.json`` that is not JSON or has values of the wrong type (``ValueError``/``TypeError``/``KeyError``
    from the model's constructor), missing files: the message names ``what`` (e.g. "the UNet"), the folder,
    the exception's first line and ``fix``. Errors that are already mirage3d's pass through unchanged.
    """
    from safetensors import SafetensorError

    try:
        yield
    except MirageError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, json.JSONDecodeError, SafetensorError) as e:
        raise ModelError(f"cannot load {what} in {folder} ({type(e).__name__}: {_first_line(e)[:200]}); {fix}") from None
