"""The errors sgm_jax raises on purpose, and how the command line reports any error in one line.

Every deliberate error is a `SgmJaxError` (the typed ones also stay the built-in type callers catch, such as
`ValueError`), and its message says what was wrong and where: file and line, sample, tensor, field or site.
"""

from __future__ import annotations

import os
import traceback

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class SgmJaxError(Exception):
    """Base of the errors sgm_jax raises on purpose; the message is meant for the user, as it is."""


class OptionError(SgmJaxError, ValueError):
    """An option or argument that is out of range or does not fit the others; the message names it."""


class InputError(SgmJaxError, ValueError):
    """Arrays handed to a model, capture or metric that do not fit it (shapes, image tokens, labels)."""


class InterventionError(SgmJaxError, ValueError):
    """An intervention that is malformed or does not fit the model; the message names the site."""


class CacheError(SgmJaxError, ValueError):
    """A cache file (answers, judge replies) that is damaged or was made for something else; it is named."""


class CheckpointError(SgmJaxError, ValueError):
    """The checkpoint's tensors do not fit the model its config describes."""


class MissingFileError(SgmJaxError, FileNotFoundError):
    """A file or folder the user named that is not there."""


class MissingPackageError(SgmJaxError, ImportError):
    """A package that only an optional feature needs (not a dependency of sgm-jax) is not installed; the message
    says how to install it."""


def user_message(error: BaseException) -> str | None:
    """The message to show for `error` (one line, or a first line and one line per listed problem), or None when
    it is not a user's mistake but a bug (show a traceback).

    A user's mistake is a `SgmJaxError`, an operating-system error (a full disk, a missing or read-only path:
    named with its path), or a `ValueError` / `KeyError` / `FileNotFoundError` raised by sgm_jax's own checks.
    """
    if isinstance(error, OSError) and error.filename is not None:
        where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
        return f"{error.strerror or type(error).__name__}: {where}"
    if isinstance(error, SgmJaxError) or (isinstance(error, (ValueError, KeyError, OSError)) and _raised_here(error)):
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        return "\n".join(lines) or type(error).__name__
    return None


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of `error`'s traceback is sgm_jax's code (a check of ours, not a library's)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE + os.sep)
