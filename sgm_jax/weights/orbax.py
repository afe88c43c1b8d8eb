"""Orbax checkpoints of converted (and possibly gated) models: fast reloads, sharded restore onto a mesh.

A checkpoint directory holds `sgm_jax_model.json` (the HF config, dtype and gated sites)
and `state/` (orbax, every variable: weights and gates). Restoring builds the model
abstractly and lets orbax put each array straight onto its shards.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sgm_jax.interventions import Intervention, intervene
from sgm_jax.interventions.intervention import identity_transport
from sgm_jax.models.site import GATE_ATTRS, IN, Site
from sgm_jax.runtime.atomic import write_json
from sgm_jax.runtime.errors import MissingFileError
from sgm_jax.weights import sharding
from sgm_jax.weights.loading import build_model

MANIFEST = "sgm_jax_model.json"


def _gated_sites(model: nnx.Module) -> tuple[dict[str, int], dict[str, int]]:
    """`({site: width} of the gates, {site: width} of the transports)` a model carries."""
    gates, transports = {}, {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Site):
            name = ".".join(map(str, path))
            for end, attr in GATE_ATTRS.items():
                gate = getattr(node, attr)
                if gate is not None:
                    gates[name + (":in" if end == IN else "")] = gate.shape[0]
            if node.transport_out is not None:
                transports[name] = node.transport_out.shape[1]
    return gates, transports


def save_checkpoint(model: nnx.Module, directory: str) -> None:
    """Save `model` (weights and gates) as an orbax checkpoint under `directory`."""
    directory = os.path.abspath(directory)
    state_dir = os.path.join(directory, "state")
    if os.path.exists(state_dir):
        raise FileExistsError(f"{state_dir} exists; sgm_jax does not overwrite checkpoints")
    dtype = {str(v.dtype) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(state_dir, nnx.state(model))
        checkpointer.wait_until_finished()
    gates, transports = _gated_sites(model)
    write_json(
        os.path.join(directory, MANIFEST),
        {
            "config": model.spec.to_hf(),
            "dtype": dtype.pop(),
            "gates": gates,
            "transports": transports,
            "special_tokens": dict(model.special_tokens),
            "max_positions": model.max_positions,
        },
    )


def load_checkpoint(
    directory: str, *, mesh: Mesh | None = None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> nnx.Module:
    """Restore a model saved by `save_checkpoint`; with `mesh`, every array lands on its shards directly."""
    directory = os.path.abspath(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise MissingFileError(f"{directory} is not an sgm_jax checkpoint (no {MANIFEST})")
    with open(path) as f:
        manifest = json.load(f)
    abstract = nnx.eval_shape(lambda: build_model(manifest["config"], dtype=manifest["dtype"]))
    transports = manifest.get("transports", {})
    if manifest["gates"] or transports:
        ones = Intervention(
            {site: np.ones(width, np.float32) for site, width in manifest["gates"].items()},
            transports={site: identity_transport(width) for site, width in transports.items()},
        )
        abstract = intervene(abstract, ones, keep_identity=True)
    graphdef, state = nnx.split(abstract)
    for _, variable in nnx.to_flat_state(state):
        placement = None
        if mesh is not None:
            placement = (
                sharding.variable_sharding(variable, mesh, rules)
                if isinstance(variable, nnx.Param)
                else NamedSharding(mesh, PartitionSpec())
            )
        variable.set_value(jax.ShapeDtypeStruct(variable.shape, variable.dtype, sharding=placement))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(os.path.join(directory, "state"), state)
    model = nnx.merge(graphdef, restored)
    model.special_tokens = tuple(
        (key, tuple(value) if isinstance(value, list) else value)
        for key, value in manifest.get("special_tokens", {}).items()
    )
    model.max_positions = manifest.get("max_positions")
    return model
