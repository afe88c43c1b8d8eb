"""Device meshes, and weights placed on them by their logical axes (the rule table is
`sgm_jax.models.partitioning`'s, re-exported here with `batch_sharding`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding

from sgm_jax.models.partitioning import DEFAULT_RULES, MESH_AXES, Rules, batch_sharding, partition_spec
from sgm_jax.runtime.errors import OptionError

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "Rules",
    "batch_sharding",
    "make_mesh",
    "partition_spec",
    "shard_model",
    "variable_sharding",
]


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


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    axes = variable.get_metadata().get("logical_axes", (None,) * len(variable.shape))
    return NamedSharding(mesh, partition_spec(axes, variable.shape, mesh, rules))


def abstract_placed(tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """`tree` (a model, or state split off one) with every variable an abstract array placed by its logical axes
    on `mesh`, as loading and `shard_model` place weights: what compiling ahead of time needs, without weights."""
    graphdef, state = nnx.split(tree) if isinstance(tree, nnx.Module) else (None, tree)
    for _, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        placement = variable_sharding(variable, mesh, rules)
        variable.set_value(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=placement))
    return state if graphdef is None else nnx.merge(graphdef, state)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Move every parameter of `model` onto `mesh` according to its logical axes (in place; returns `model`)."""
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            variable.set_value(jax.device_put(variable[...], variable_sharding(variable, mesh, rules)))
    return model
