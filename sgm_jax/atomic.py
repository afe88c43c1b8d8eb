"""Atomic file writes: write to a temporary name beside the target, then rename, so readers and
resumed runs only ever see whole files."""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

from safetensors import SafetensorError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str, write) -> None:
    """Call `write(tmp_path)`, then rename the result onto `path` (with ordinary, umask-given permissions,
    not the private ones of a temporary file). An operating-system error (a full disk, a read-only folder)
    names `path`, not the temporary file, and leaves nothing behind."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as err:
        raise OSError(err.errno, err.strerror, path) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None or err.filename == tmp:  # a full disk or a write limit: name the file meant
            raise OSError(err.errno, err.strerror, path) from None
        raise
    except SafetensorError as err:
        # safetensors' writer reports an operating-system error as its own error, the errno inside the text.
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
