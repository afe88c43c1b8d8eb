"""Llama-3.2-Vision (Mllama) against transformers (fp32, eager): every local and global vision layer, the vision
features, the projector, decoder states and logits; greedy generation with and without gates (the cross-attention
cache), pooled capture, export, sharding, the intermediate-layer switch and input refusals."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import hf_mllama
import hf_tiny
import sgm_jax
from sgm_jax import sharding
from sgm_jax.batching import image_inputs, model_batch
from sgm_jax.export import export_hf
from sgm_jax.interventions import Intervention
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.mllama import text_cross_attention_mask
from sgm_jax.models.site import OUT
from sgm_jax.sites import list_sites

TOL = 1e-4
# 1, 2 and 4 tiles; one and two images per row; left padding; a text-only row.
MIXED = [
    ("describe the picture please", [(20, 20)]),
    ("a red square above a blue circle", [(25, 52), (40, 40)]),
    ("that is a nice word", []),
]
TEXT_ONLY = [("a red square", []), ("describe the picture please", [])]
PROJECTOR = "model.multi_modal_projector"
LOCAL_MLP = "model.vision_model.transformer.layers.1.mlp.fc1"
GLOBAL_MLP = "model.vision_model.global_transformer.layers.0.mlp.fc2"


@pytest.fixture(scope="module", params=[2, 4], ids=["gqa", "mha"])
def case(request, tmp_path_factory):
    config = hf_mllama.mllama_config(kv_heads=request.param)
    directory = hf_mllama.save_mllama(str(tmp_path_factory.mktemp("mllama")), config, seed=3)
    model, processor = sgm_jax.load_model(directory)
    return model, processor, hf_mllama.load_mllama_reference(directory), directory


ONE = pytest.mark.parametrize("case", [2], indirect=True, ids=["gqa"])  # generic paths: one variant


def _valid(batch):
    return batch["attention_mask"].astype(bool)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "input_ids"}


def test_logits_and_every_intermediate_match_transformers(case):
    model, processor, hf, _ = case
    batch = hf_mllama.mllama_batch(processor, MIXED)
    assert sorted(set(batch["aspect_ratio_mask"].sum(-1).ravel().tolist())) == [1, 2, 4]
    ref = hf_mllama.mllama_reference(hf, batch)
    prepared = model_batch(model, batch)
    model.model.multi_modal_projector.record = frozenset({OUT})
    try:
        out, sown = nnx.capture(model.forward, nnx.Intermediate)(
            prepared["input_ids"], attention_mask=prepared["attention_mask"], **image_inputs(prepared)
        )
    finally:
        model.model.multi_modal_projector.record = frozenset()
    for i, (ours, theirs) in enumerate(zip(out["vision_hidden_states"][1:], ref["vision_layers"], strict=True)):
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=TOL, rtol=0, err_msg=f"vision layer {i}")
    projector = dict(nnx.to_flat_state(sown))[("model", "multi_modal_projector", OUT)].get_value()[0]
    np.testing.assert_allclose(
        np.asarray(projector).reshape(ref["projector"].shape), ref["projector"], atol=TOL, rtol=0
    )

    length, valid = batch["input_ids"].shape[1], _valid(batch)
    stream = [np.asarray(h)[:, -length:] for h in out["text_stream"][:-1]] + [
        np.asarray(out["text_final"])[:, -length:]
    ]
    assert len(stream) == len(ref["hidden_states"])
    for ours, theirs in zip(stream, ref["hidden_states"]):
        assert np.abs(ours - theirs)[valid].max() <= TOL
    np.testing.assert_allclose(np.asarray(model(**batch))[valid], ref["logits"][valid], atol=TOL, rtol=0)


def test_a_text_only_batch_skips_the_cross_layers_as_transformers_does(case):
    model, processor, hf, _ = case
    batch = hf_mllama.mllama_batch(processor, TEXT_ONLY)
    assert "pixel_values" not in batch
    ref = hf_mllama.mllama_reference(hf, batch)["logits"]
    assert np.abs(np.asarray(model(**batch)) - ref)[_valid(batch)].max() <= TOL


def test_the_cross_mask_is_derived_as_the_processor_builds_it(case):
    model, processor, _, _ = case
    batch = hf_mllama.mllama_batch(processor, MIXED + [("a", [(20, 20), (40, 40)])], seed=4)
    derived = text_cross_attention_mask(batch["input_ids"], model.image_token_id, batch["aspect_ratio_mask"])
    np.testing.assert_array_equal(derived, batch["cross_attention_mask"])
    without = {k: v for k, v in batch.items() if k != "cross_attention_mask"}
    np.testing.assert_array_equal(np.asarray(model(**without)), np.asarray(model(**batch)))


def test_the_intermediate_layer_switch_takes_each_listed_layers_input(case, tmp_path):
    model, processor, hf, directory = case
    with open(f"{directory}/config.json") as f:
        config = json.load(f)
    config["vision_config"]["intermediate_layers_source"] = "input"
    switched = sgm_jax.build_model(config)
    nnx.update(switched, nnx.state(model))
    batch = hf_mllama.mllama_batch(processor, MIXED[:2], seed=5)
    prepared = model_batch(model, batch)
    args = [jnp_ for jnp_ in (prepared["pixel_values"], prepared["aspect_ratio_ids"], prepared["aspect_ratio_mask"])]
    features, hidden = switched.model.vision_model(*args)
    d, spec = switched.spec.vision.hidden_size, switched.spec.vision
    images, tiles = features.shape[1] * features.shape[0], spec.max_num_tiles
    inter = np.asarray(features)[..., d:].reshape(images, tiles, spec.num_patches, d, -1)
    for k, layer in enumerate(spec.intermediate_layers_indices):  # feature d*K + k is layer k's channel d
        layer_input = np.asarray(hidden[layer]).reshape(images, tiles, spec.padded_patches, d)[:, :, : spec.num_patches]
        np.testing.assert_allclose(inter[..., k], layer_input, atol=1e-6, rtol=0)
    default, _ = model.model.vision_model(*args)
    assert not np.allclose(np.asarray(default)[..., d:], np.asarray(features)[..., d:])


def _gates(model, seed):
    rng = np.random.default_rng(seed)
    names = [
        "model.language_model.layers.0.mlp.up_proj",
        "model.language_model.layers.1.mlp.down_proj:in",
        "model.language_model.layers.1.cross_attn.q_proj",
        "model.language_model.layers.3.cross_attn.o_proj",
        LOCAL_MLP,
        GLOBAL_MLP,
        PROJECTOR,
    ]
    sites = list_sites(model)
    return Intervention({name: rng.uniform(0.2, 1.5, sites[name]).astype(np.float32) for name in names})


def test_sites_are_transformers_module_names(case):
    model, _, hf, _ = case
    sites, modules = list_sites(model), dict(hf.named_modules())
    assert {name.removesuffix(":in") for name in sites} <= set(modules)
    assert sites[f"{PROJECTOR}:in"] == 96 and sites[PROJECTOR] == 64
    assert (
        sites["model.language_model.layers.3.cross_attn.k_proj"]
        == modules["model.language_model.layers.3.cross_attn.k_proj"].out_features
    )


@pytest.mark.parametrize("rows", [MIXED, TEXT_ONLY], ids=["images", "text-only"])
def test_greedy_generate_equals_transformers_with_and_without_gates(case, rows):
    model, processor, hf, _ = case
    batch = hf_mllama.mllama_batch(processor, rows, seed=1)
    iv = _gates(model, 7)
    hf_tiny.assert_generate_matches(model, hf, batch, iv, eos=2, pad=0)


def test_pooled_capture_equals_hooks_on_transformers(case):
    model, processor, hf, _ = case
    rows = MIXED[:2]
    batch = hf_mllama.mllama_batch(processor, rows, seed=2)
    sites = ["model.language_model.layers.3.mlp.up_proj", LOCAL_MLP, GLOBAL_MLP, PROJECTOR]
    ours = sgm_jax.collect_responses(model, [batch], sites=sites)

    modules, seen = dict(hf.named_modules()), {}
    handles = [modules[s].register_forward_hook(lambda m, a, y, s=s: seen.__setitem__(s, y.numpy())) for s in sites]
    with torch.no_grad():
        hf(**{k: torch.tensor(v) for k, v in batch.items()})
    for h in handles:
        h.remove()
    spec, valid = model.spec.vision, _valid(batch)
    b, n, t = batch["pixel_values"].shape[:3]
    tiles = batch["aspect_ratio_mask"].reshape(b * n, t) > 0
    real = batch["aspect_ratio_ids"].reshape(b * n) > 0
    for site in sites:
        if site.startswith("model.language_model"):
            expected = np.stack([seen[site][r][valid[r]].mean(0) for r in range(len(rows))])
        else:
            if site == PROJECTOR:
                values = seen[site].reshape(b * n, t, spec.num_patches, -1)
            else:  # the padded positions of each tile are not the image's
                values = seen[site].reshape(b * n, t, spec.padded_patches, -1)[:, :, : spec.num_patches]
            per_image = [values[i][tiles[i]].reshape(-1, values.shape[-1]).mean(0) for i in range(b * n)]
            expected = np.stack(
                [np.mean([per_image[r * n + i] for i in range(n) if real[r * n + i]], 0) for r in range(b)]
            )
        np.testing.assert_allclose(ours[site], expected, atol=1e-5, rtol=0, err_msg=site)


def test_export_with_gates_folded_loads_in_transformers(case, tmp_path):
    model, processor, _, _ = case
    gated = sgm_jax.intervene(model, Intervention({k: v for k, v in _gates(model, 9).alphas.items() if ":in" not in k}))
    exported = hf_mllama.load_mllama_reference(export_hf(gated, str(tmp_path / "export")))
    batch = hf_mllama.mllama_batch(processor, MIXED, seed=5)
    ref = hf_mllama.mllama_reference(exported, batch)["logits"]
    assert np.abs(np.asarray(gated(**batch)) - ref)[_valid(batch)].max() <= TOL


@ONE
def test_the_state_dict_layout_loads(case, tmp_path):
    model, processor, _, directory = case

    def to_state_dict(key):
        if key.startswith("language_model.lm_head."):
            return key.removeprefix("language_model.")
        return "model." + key.replace("language_model.model.", "language_model.", 1)

    batch = hf_mllama.mllama_batch(processor, MIXED, seed=6)
    out = hf_tiny.rewrite_keys(directory, str(tmp_path / "state"), to_state_dict)
    np.testing.assert_array_equal(np.asarray(sgm_jax.load_model(out)[0](**batch)), np.asarray(model(**batch)))


@ONE
def test_eight_device_mesh_gives_the_unsharded_logits(case):
    model, processor, _, directory = case
    sharded, _ = sgm_jax.load_model(directory, mesh=sharding.make_mesh(data=2, fsdp=2, tensor=2))
    table = sharded.model.vision_model.gated_positional_embedding.tile_embedding.embedding[...]
    assert (
        len({s.device for s in table.addressable_shards}) > 1
        and table.addressable_shards[0].data.shape[1] < table.shape[1]
    )
    batch = hf_mllama.mllama_batch(processor, MIXED, seed=7)
    np.testing.assert_allclose(np.asarray(sharded(**batch)), np.asarray(model(**batch)), atol=1e-5, rtol=0)
    assert jax.device_count() == 8


@ONE
def test_inputs_that_do_not_fit_are_refused_saying_what_was_expected(case):
    model, processor, _, _ = case
    batch = hf_mllama.mllama_batch(processor, MIXED)
    with pytest.raises(ValueError, match=r"cross_attention_mask is \[3, \d+, 1, 4\]; for 2 image\(s\) per row"):
        model(**dict(batch, cross_attention_mask=batch["cross_attention_mask"][:, :, :1]))
    with pytest.raises(ValueError, match=r"aspect_ratio_ids must lie in \[0, 8\] .* got 9 at \[row, image\] \[0, 1\]"):
        model(**dict(batch, aspect_ratio_ids=np.where(batch["aspect_ratio_ids"] == 0, 9, batch["aspect_ratio_ids"])))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["vision_config"].update(vision_output_dim=64), "vision_output_dim=64"),
        (lambda c: c["text_config"]["rope_parameters"].update(rope_type="yarn"), "rope_type='yarn'"),
        (lambda c: c["vision_config"].update(intermediate_layers_source="middle"), "intermediate_layers_source"),
    ],
)
def test_configs_asking_for_what_the_port_lacks_are_refused(edit, message, tmp_path):
    directory = hf_mllama.save_mllama(str(tmp_path), seed=1)
    hf_tiny.edit_config(directory, edit)
    with pytest.raises(UnsupportedConfigError, match=message):
        sgm_jax.load_model(directory)
