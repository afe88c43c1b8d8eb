"""Atomic file writes: write to a temporary name beside the target, then rename, so readers and
resumed runs only ever see whole files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def jsonl_appender(path: str, header: dict[str, Any], *, write: bool = True) -> Iterator[Callable[[list], None]]:
    """`append(rows)`: JSON lines added to `path` and synced to disk at once, so a killed run loses at most a torn
    last line (ended here, so the next row starts on its own line; readers skip it). A new file starts with
    `header` as its first line. With `write` False (a process other than a job's writer) nothing is written."""
    if not write:
        yield lambda rows: None
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")

        def append(rows: list) -> None:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

        yield append


def read_jsonl_log(path: str, damaged: Callable[[], Exception]) -> tuple[Any, list[Any]]:
    """`(header, rows)` of a file `jsonl_appender` writes; `(None, [])` when there is none. A torn last row (a
    killed run) is skipped; an empty file or a torn header alone (a full disk at the first write) is removed;
    a damaged header above rows raises `damaged()`."""
    if not os.path.exists(path):
        return None, []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        if any(line.strip() for line in lines[1:]):
            raise damaged() from None
        os.remove(path)
        return None, []
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return header, rows
