"""Llama-3.2-Vision's (Mllama's) own paths: a text-only batch skips the cross-attention layers as transformers does
(forward and greedy generation with gates on them), the cross mask is derived as the processor builds it, and the
intermediate-layer switch takes each listed layer's input. What every family has (parity with transformers,
generation, capture, export, layouts, ...) is in test_families.py."""

import json

import numpy as np
import pytest
from flax import nnx

import hf_tiny
import sgm_jax
from families import FAMILIES
from sgm_jax.interventions import Intervention
from sgm_jax.models.batch import model_batch
from sgm_jax.models.mllama import text_cross_attention_mask
from sgm_jax.responses.sites import list_sites

TOL = 1e-4
CASE = FAMILIES["mllama"]
TEXT_ONLY = [("a red square", []), ("describe the picture please", [])]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    directory = CASE.save(str(tmp_path_factory.mktemp("mllama")), seed=3)
    model, processor = sgm_jax.load_model(directory)
    return model, processor, CASE.load_reference(directory), directory


def test_a_text_only_batch_skips_the_cross_layers_as_transformers_does(loaded):
    model, processor, hf, _ = loaded
    batch = CASE.batch(processor, TEXT_ONLY, seed=1)
    assert "pixel_values" not in batch
    ref = CASE.reference(hf, batch)["logits"]
    assert np.abs(np.asarray(model(**batch)) - ref)[batch["attention_mask"].astype(bool)].max() <= TOL
    cross = ["model.language_model.layers.1.cross_attn.q_proj", "model.language_model.layers.3.cross_attn.o_proj"]
    sites, rng = list_sites(model), np.random.default_rng(7)
    gates = Intervention({s: rng.uniform(0.2, 1.5, sites[s]).astype(np.float32) for s in cross})
    hf_tiny.assert_generate_matches(model, hf, batch, gates, eos=2, pad=0)


def test_the_cross_mask_is_derived_as_the_processor_builds_it(loaded):
    model, processor, _, _ = loaded
    batch = CASE.batch(processor, CASE.rows + (("a", ((20, 20), (40, 40))),), seed=4)
    derived = text_cross_attention_mask(batch["input_ids"], model.image_token_id, batch["aspect_ratio_mask"])
    np.testing.assert_array_equal(derived, batch["cross_attention_mask"])
    without = {k: v for k, v in batch.items() if k != "cross_attention_mask"}
    np.testing.assert_array_equal(np.asarray(model(**without)), np.asarray(model(**batch)))


@nnx.jit
def _vision(model, *args):
    return model.model.vision_model(*args)


def test_the_intermediate_layer_switch_takes_each_listed_layers_input(loaded):
    model, processor, _, directory = loaded
    with open(f"{directory}/config.json") as f:
        config = json.load(f)
    config["vision_config"]["intermediate_layers_source"] = "input"
    switched = nnx.eval_shape(lambda: sgm_jax.build_model(config))  # shapes only: the weights are the model's
    nnx.update(switched, nnx.state(model))
    batch = CASE.batch(processor, CASE.rows[:2], seed=5)
    inputs = model_batch(model, batch).inputs
    args = [inputs[name] for name in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")]
    features, hidden = _vision(switched, *args)
    d, spec = switched.spec.vision.hidden_size, switched.spec.vision
    images, tiles = features.shape[1] * features.shape[0], spec.max_num_tiles
    inter = np.asarray(features)[..., d:].reshape(images, tiles, spec.num_patches, d, -1)
    for k, layer in enumerate(spec.intermediate_layers_indices):  # feature d*K + k is layer k's channel d
        layer_input = np.asarray(hidden[layer]).reshape(images, tiles, spec.padded_patches, d)[:, :, : spec.num_patches]
        np.testing.assert_allclose(inter[..., k], layer_input, atol=1e-6, rtol=0)
    default, _ = _vision(model, *args)
    assert not np.allclose(np.asarray(default)[..., d:], np.asarray(features)[..., d:])
