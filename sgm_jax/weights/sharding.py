"""Logical axis names -> device mesh, through one small rule table (MaxText style).

Parameters carry logical names (`logical_axes` metadata: `embed`, `mlp`,
`heads`, `kv_heads`, `vocab`, `norm`); activations use `batch`. The rules map
each name to mesh axes of a `(data, fsdp, tensor)` mesh. A mesh axis is used at
most once per array and only where its size divides the dimension, so small or
odd shapes fall back to replication instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from sgm_jax.runtime.errors import OptionError

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, tuple[str, ...]], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("vocab", ("tensor",)),
    ("norm", ()),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp, tensor)` mesh over this process's devices (by default); one size may be -1 to take the
    remaining devices. In a job over several processes (`sgm_jax.runtime.distributed`) each process runs its own
    share of the batches on its own chips, so its model lives on a mesh of its local devices."""
    devices = list(devices if devices is not None else jax.local_devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise OptionError(f"only one mesh axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise OptionError(f"{len(devices)} devices cannot be split into data={data}, fsdp={fsdp}, tensor={tensor}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise OptionError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {math.prod(sizes)} "
            f"devices, {len(devices)} are available"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def partition_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> PartitionSpec:
    """The mesh placement of an array whose dimensions have these logical names."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule (rules cover {sorted(table)})")
        chosen = []
        for mesh_axis in table.get(name, ()) if name is not None else ():
            n = mesh.shape[mesh_axis]
            if mesh_axis not in used and size % (n * math.prod(mesh.shape[a] for a in chosen)) == 0:
                chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    axes = variable.get_metadata().get("logical_axes", (None,) * len(variable.shape))
    return NamedSharding(mesh, partition_spec(axes, variable.shape, mesh, rules))


def batch_sharding(mesh: Mesh, shape: Sequence[int], rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Shard an input's leading (batch) dimension over the data-parallel axes, replicate the rest."""
    return NamedSharding(mesh, partition_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Move every parameter of `model` onto `mesh` according to its logical axes (in place; returns `model`)."""
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            variable.set_value(jax.device_put(variable[...], variable_sharding(variable, mesh, rules)))
    return model
