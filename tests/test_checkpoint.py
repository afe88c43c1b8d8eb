"""Orbax checkpoints: a gated model round-trips exactly, and restores sharded onto an 8-device mesh."""

import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import hf_tiny
import sgm_jax
from sgm_jax.interventions import Intervention
from sgm_jax.weights import sharding
from sgm_jax.weights.orbax import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    model, _ = sgm_jax.load_model(hf_tiny.save_tiny(tmp_path_factory.mktemp("ckpt"), seed=13, kv_heads=2))
    widths = sgm_jax.list_sites(model)
    rng = np.random.default_rng(0)
    sites = ["model.language_model.layers.1.mlp.up_proj", "model.multi_modal_projector.linear_2:in"]
    return sgm_jax.intervene(model, Intervention({s: rng.uniform(0, 1, widths[s]) for s in sites}))


def _flat(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model))}


def test_round_trip_is_exact_and_keeps_the_gates(gated, tmp_path):
    save_checkpoint(gated, str(tmp_path / "ck"))
    restored = load_checkpoint(str(tmp_path / "ck"))
    assert dict(gated.special_tokens)["eos_token_id"] and restored.special_tokens == gated.special_tokens
    a, b = _flat(gated), _flat(restored)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    n = gated.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(0, pads=[0, 2], length=n + 6, features_per_image=n)
    np.testing.assert_array_equal(
        np.asarray(restored(ids, pixel_values=pixels, attention_mask=mask)),
        np.asarray(gated(ids, pixel_values=pixels, attention_mask=mask)),
    )
    with pytest.raises(FileExistsError, match="does not overwrite"):
        save_checkpoint(gated, str(tmp_path / "ck"))


def test_restore_onto_a_mesh(gated, tmp_path):
    save_checkpoint(gated, str(tmp_path / "ck"))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    restored = load_checkpoint(str(tmp_path / "ck"), mesh=mesh)
    kernel = restored.model.language_model.layers[0].mlp.up_proj.kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    np.testing.assert_array_equal(
        np.asarray(kernel), np.asarray(gated.model.language_model.layers[0].mlp.up_proj.kernel[...])
    )
    with pytest.raises(FileNotFoundError, match="not an sgm_jax checkpoint"):
        load_checkpoint(str(tmp_path))
