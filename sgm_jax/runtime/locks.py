"""One writer at a time for a directory sgm_jax fills over a long run (a response store, an evaluation folder).

The lock is an advisory `flock` on `DIR/.lock`, so the operating system drops it when its holder exits,
however it exits (kill -9 included): a lock is never left stale. The holder writes who it is into the file,
so a second writer is told which process to wait for.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from collections.abc import Iterator

from sgm_jax.runtime.errors import SgmJaxError

LOCK_NAME = ".lock"


class LockedError(SgmJaxError, RuntimeError):
    """Another process is writing the directory; the message says which."""


@contextlib.contextmanager
def writer_lock(directory: str, what: str) -> Iterator[None]:
    """Hold `directory`'s writer lock inside the block; `what` names it in messages. A directory the block
    created and left empty (it refused, or failed at its first write) is removed again."""
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            raise LockedError(
                f"{what} {directory} is being written by {holder}; wait for it to finish (or stop it), then rerun"
            ) from None
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (since {started})".encode(), 0)
        except OSError as err:  # a full disk: name the file
            raise OSError(err.errno, err.strerror, path) from None
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        if created and os.listdir(directory) == [LOCK_NAME]:
            os.remove(path)
            os.rmdir(directory)
