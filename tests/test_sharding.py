"""Logical-axis sharding on 8 host CPU devices: sharded logits equal unsharded ones."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import hf_tiny
import sgm_jax
from sgm_jax.decoding.generate import decode, decode_arguments
from sgm_jax.weights import sharding


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return hf_tiny.save_tiny(tmp_path_factory.mktemp("saved"), seed=9, kv_heads=2)


def test_eight_devices_are_available():
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before jax is imported"


def test_rule_table_maps_logical_axes_and_replicates_what_does_not_divide():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    assert sharding.partition_spec(("embed", "mlp"), (32, 56), mesh) == P("fsdp", "tensor")
    assert sharding.partition_spec(("embed", "mlp"), (32, 7), mesh) == P("fsdp", None)
    assert sharding.partition_spec(("batch", None), (8, 3), mesh) == P(("data", "fsdp"), None)
    assert sharding.partition_spec(("batch", None), (2, 3), mesh) == P("data", None)
    with pytest.raises(KeyError, match="logical axis 'experts' has no sharding rule"):
        sharding.partition_spec(("experts",), (8,), mesh)
    with pytest.raises(ValueError, match="needs 16 devices, 8 are available"):
        sharding.make_mesh(data=2, fsdp=4, tensor=2)


def test_model_loaded_onto_a_mesh_gives_the_unsharded_logits(saved):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    plain, _ = sgm_jax.load_model(saved)
    sharded, _ = sgm_jax.load_model(saved, mesh=mesh)
    kernel = sharded.model.language_model.layers[0].mlp.up_proj.kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert len({s.device for s in kernel.addressable_shards}) == 8
    n = plain.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(5, pads=[0, 2, 4, 6], length=n + 12, features_per_image=n)
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.shape))
    out = sharded(put(ids), pixel_values=put(pixels), attention_mask=put(mask))
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(plain(ids, pixel_values=pixels, attention_mask=mask)), atol=1e-5
    )


def test_a_sharded_model_takes_its_batch_split_over_the_data_axes(saved):
    """Generation on a model sharded over 8 devices: each device decodes and caches only its rows (the compiled
    program's temporaries per device shrink against the same program fed replicated inputs), and the tokens are
    the unsharded model's."""
    mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
    plain, _ = sgm_jax.load_model(saved)
    sharded, _ = sgm_jax.load_model(saved, mesh=mesh)
    n = plain.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(8, pads=[0, 2, 4, 6, 1, 3, 5, 0], length=n + 12, features_per_image=n)
    args, static = decode_arguments(sharded, ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8)
    assert args[0].sharding.spec == P(("data", "fsdp"), None)
    assert args[2]["pixel_values"].sharding.spec == P(("data", "fsdp"), None, None, None)
    replicated = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.ndim else x, args[:3])
    temporaries = [
        decode.trace(sharded, *inputs, *args[3:], **static).lower().compile().memory_analysis().temp_size_in_bytes
        for inputs in (args[:3], replicated)
    ]
    assert temporaries[0] < temporaries[1] / 2, temporaries
    tokens = sgm_jax.generate(sharded, ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8)
    expected = sgm_jax.generate(plain, ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8)
    np.testing.assert_array_equal(tokens, expected)
