"""One job over several processes (the hosts of a TPU pod slice, or local processes): start-up, shares, gathers.

Every process runs the same command on the same inputs, takes a disjoint share of the work (batches of a
collection or an evaluation, chunks of a sweep, neurons of a scoring), and the results travel to every
process with one all-gather per round, so all of them hold the whole result and process 0 alone writes
files. Work units are dealt round-robin in a fixed order, and each result lands where a single process would
have put it, so a job over N processes writes bitwise what one process writes.

Start-up, in order: explicit `--coordinator HOST:PORT --num-processes N --process-id I`; else the
environment's SGM_JAX_COORDINATOR, SGM_JAX_NUM_PROCESSES, SGM_JAX_PROCESS_ID; else, on a Cloud TPU pod slice
(TPU_WORKER_HOSTNAMES lists several workers), jax.distributed's own detection; else one process. On CPU the
processes talk through gloo collectives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

from sgm_jax.runtime.errors import OptionError, SgmJaxError

T = TypeVar("T")
R = TypeVar("R")

ENVIRONMENT = ("SGM_JAX_COORDINATOR", "SGM_JAX_NUM_PROCESSES", "SGM_JAX_PROCESS_ID")


class ProcessError(SgmJaxError, RuntimeError):
    """Another process of the job stopped (or could not be reached): what is written so far is kept."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Which process this is, of how many."""

    index: int = 0
    count: int = 1

    @property
    def writer(self) -> bool:
        """Whether this process writes files (process 0)."""
        return self.index == 0


_cluster = Cluster()
_solo = False  # inside `solo()`: this process does whole pieces of work on its own, without the others


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Inside the block this process works alone: the sharing helpers run everything here and gather from no
    one. For a unit of work already dealt to this process (a sweep's chunk) whose code shares work itself."""
    global _solo
    previous, _solo = _solo, True
    try:
        yield
    finally:
        _solo = previous


def cluster() -> Cluster:
    """The job this process belongs to (one process unless `initialize` joined several)."""
    return _cluster


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> Cluster:
    """Join the job described by the arguments, else the environment (see the module docstring); a process
    that has joined stays in its job (commands run one after another in one process share it)."""
    global _cluster
    if _cluster.count > 1:
        return _cluster
    env = os.environ
    if coordinator is None and num_processes is None and process_id is None:
        coordinator = env.get("SGM_JAX_COORDINATOR") or None
        num_processes = _int_env("SGM_JAX_NUM_PROCESSES")
        process_id = _int_env("SGM_JAX_PROCESS_ID")
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise OptionError(
            "a job over several processes needs all three of --coordinator HOST:PORT, --num-processes N and "
            "--process-id I (or SGM_JAX_COORDINATOR, SGM_JAX_NUM_PROCESSES, SGM_JAX_PROCESS_ID)"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise OptionError(f"--process-id must lie in [0, {num_processes}) and --num-processes be >= 1")
        if num_processes == 1:
            return _cluster
        _join(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    elif "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        _join()  # a Cloud TPU pod slice: jax finds the coordinator and this worker's index itself
    else:
        return _cluster
    _cluster = Cluster(jax.process_index(), jax.process_count())
    return _cluster


def abandon(code: int) -> None:
    """Leave a job another process of which is gone: exit at once with `code`, without the shutdown handshake
    (which would wait for the lost process until jax's heartbeat timeout gives up on it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"{name}={value!r} is not a whole number") from None


def _join(**kwargs) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        raise ProcessError(f"could not join the job ({kwargs or 'detected'}): {str(err).splitlines()[0]}") from None


def workers() -> Cluster:
    """Who shares the work now: the job, or this process alone inside `solo()`."""
    return Cluster() if _solo else _cluster


def all_gather_bytes(payload: bytes) -> list[bytes]:
    """Every process's `payload`, in process order (on one process, or inside `solo()`, just its own)."""
    if workers().count == 1:
        return [payload]
    from jax.experimental import multihost_utils

    try:
        sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(payload)], np.int64))).reshape(-1)
        buffer = np.zeros(int(sizes.max()) or 1, np.uint8)
        buffer[: len(payload)] = np.frombuffer(payload, np.uint8)
        gathered = np.asarray(multihost_utils.process_allgather(buffer))
    except (RuntimeError, ValueError) as err:
        raise ProcessError(
            f"process {_cluster.index}: another process of the job stopped ({str(err).splitlines()[0][:160]}); "
            "what was written so far is kept: run the same command again on every process to resume"
        ) from None
    return [gathered[i, : int(n)].tobytes() for i, n in enumerate(sizes)]


def broadcast_json(value: Any) -> Any:
    """Process 0's JSON-able `value`, on every process (on one, `value` itself)."""
    if workers().count == 1:
        return value
    return json.loads(all_gather_bytes(json.dumps(value if workers().writer else None).encode())[0])


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as bytes (safetensors: exact dtypes and values, no pickle)."""
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(a) for name, a in arrays.items()})


def decode_arrays(payload: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(payload)


def barrier() -> None:
    """Wait until every process of the job gets here (process 0 has finished writing, say)."""
    all_gather_bytes(b"")


def rounds(
    items: Sequence[T],
    work: Callable[[T], R],
    encode: Callable[[R], bytes] = _json,
    decode: Callable[[bytes], R] = json.loads,
) -> Iterator[list[tuple[int, R]]]:
    """Deal `items` round-robin over the processes and yield, round after round, every process's results as
    `(position in items, result)` pairs, in order of position: each process computes one item a round, then
    the round's results (as `encode` writes them, JSON by default) are gathered to all. On one process, a round
    is one item, handed on as it is."""
    group = workers()
    count = group.count
    if count == 1:
        for position, item in enumerate(items):
            yield [(position, work(item))]
        return
    for start in range(0, len(items), count):
        mine = start + group.index
        payload = encode(work(items[mine])) if mine < len(items) else b""
        gathered = all_gather_bytes(payload)
        yield [(start + i, decode(b)) for i, b in enumerate(gathered) if start + i < len(items)]
