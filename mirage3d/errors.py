"""Exceptions that mean "the user gave us something we cannot use".

Library code raises these with a message that names the bad value and says how to fix it; the CLI turns
them into one line on stderr and exit code 1 (a traceback only with ``MIRAGE3D_DEBUG=1``).
"""

from __future__ import annotations


class MirageError(Exception):
    """Base class of every expected, user-facing mirage3d error."""


class InputError(MirageError, ValueError):
    """A file, folder or option given by the user is missing, malformed or out of range."""


class ModelError(MirageError, ValueError):
    """A model folder is missing, incomplete or not a mirage3d model."""


class DependencyError(MirageError, ImportError):
    """An optional dependency (extra) or pretrained weights are not available here."""


def one_line(e: BaseException) -> str:
    """The one-line message of an expected error (the CLI prints it; ``mirage3d serve`` sends it to the client)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) and e.filename:
        msg = f"{e.strerror or type(e).__name__}: {e.filename}"
    return msg
