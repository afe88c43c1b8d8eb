"""Folded export: gates become weights, transformers loads the checkpoint and agrees with the gated model."""

import os

import numpy as np
import pytest
from flax import nnx

import hf_tiny
import sgm_jax
from sgm_jax.interventions import Intervention
from sgm_jax.models.llama import LlamaSpec
from sgm_jax.models.llava import LlavaSpec
from sgm_jax.models.site import Gate
from sgm_jax.weights.export import NotFoldableError, export_hf, fold_gates

FOLDABLE = [
    "model.language_model.layers.0.mlp.up_proj",
    "model.language_model.layers.0.mlp.gate_proj",
    "model.language_model.layers.1.mlp.down_proj",
    "model.language_model.layers.1.mlp.down_proj:in",
    "model.language_model.layers.0.mlp.act_fn",
    "model.language_model.layers.1.mlp",
    "model.language_model.layers.0.self_attn:in",
    "model.language_model.layers.1.post_attention_layernorm",
    "model.language_model.embed_tokens",
    "lm_head:in",
    "model.vision_tower.embeddings",
    "model.vision_tower.encoder.layers.0.mlp.activation_fn",
    "model.vision_tower.encoder.layers.1.self_attn",
    "model.vision_tower.pre_layrnorm",
    "model.multi_modal_projector.act",
    "model.multi_modal_projector:in",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return hf_tiny.save_tiny(
        tmp_path_factory.mktemp("ckpt"), seed=12, processor=True, kv_heads=2, attention_bias=True, mlp_bias=True
    )


def _gated(model, sites, seed=0):
    rng = np.random.default_rng(seed)
    widths = sgm_jax.list_sites(model)
    return sgm_jax.intervene(model, Intervention({s: rng.uniform(0.2, 1.4, widths[s]) for s in sites}))


def _batch(model):
    n = model.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(7, pads=[0, 3], length=n + 9, features_per_image=n)
    ids[ids == hf_tiny.IMAGE_TOKEN] = model.image_token_id
    return ids, mask, pixels


def test_exported_checkpoint_loads_in_transformers_and_matches_the_gated_model(checkpoint, tmp_path):
    model, processor = sgm_jax.load_model(checkpoint)
    gated = _gated(model, FOLDABLE)
    out = export_hf(gated, str(tmp_path / "export"), processor=processor, max_shard_bytes=40_000)
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    ids, mask, pixels = _batch(model)
    ours = np.asarray(gated(ids, pixel_values=pixels, attention_mask=mask))
    ref = hf_tiny.reference_logits(hf_tiny.load_reference(out), ids, mask, pixels)
    valid = mask.astype(bool)
    assert np.abs(ours - ref)[valid].max() <= 1e-4
    reloaded, _ = sgm_jax.load_model(out)
    assert not nnx.state(reloaded, Gate)
    assert dict(model.special_tokens)["eos_token_id"] and reloaded.special_tokens == model.special_tokens
    np.testing.assert_allclose(np.asarray(reloaded(ids, pixel_values=pixels, attention_mask=mask)), ours, atol=1e-4)


def test_folding_leaves_the_gated_model_untouched(checkpoint):
    model, _ = sgm_jax.load_model(checkpoint)
    gated = _gated(model, FOLDABLE[:3])
    before = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(gated))}
    folded = fold_gates(gated)
    assert not nnx.state(folded, Gate)
    after = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(gated))}
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_unfoldable_gates_are_named(checkpoint):
    model, _ = sgm_jax.load_model(checkpoint)
    gated = _gated(
        model,
        ["model.language_model.layers.0", "model.language_model.norm:in", "model.language_model.layers.0.mlp.up_proj"],
    )
    with pytest.raises(NotFoldableError, match=r"\['model.language_model.layers.0', 'model.language_model.norm:in'\]"):
        fold_gates(gated)


def test_config_round_trips_through_the_spec(checkpoint, tmp_path):
    model, _ = sgm_jax.load_model(checkpoint)
    assert LlavaSpec.from_hf(model.spec.to_hf()) == model.spec
    llama, _ = sgm_jax.load_model(hf_tiny.save_llama(str(tmp_path / "llama"), legacy_rope_theta=5e5))
    assert LlamaSpec.from_hf(llama.spec.to_hf()) == llama.spec
