"""InternVL against transformers (fp32, eager): InternViT states per tile, pixel shuffle and projector, decoder
states, logits (Qwen2 and Llama LMs, qk-norm, LayerNorm and RMSNorm, mean pooling on and off, one tile and tiles
with the thumbnail, tied and untied), greedy generation with and without gates, pooled capture, export, sharding."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import hf_internvl
import hf_tiny
import sgm_jax
from sgm_jax import sharding
from sgm_jax.batching import image_inputs, model_batch
from sgm_jax.convert import CheckpointError
from sgm_jax.export import export_hf
from sgm_jax.interventions import Intervention
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.site import OUT
from sgm_jax.sites import list_sites

TOL = 1e-4
# Two images in one row, left padding, and a text-only row.
MIXED = [
    ("describe the picture please", [(30, 50)]),
    ("a red square above a blue circle", [(61, 20), (40, 40)]),
    ("that is a nice word", []),
]
PROJECTOR = "model.multi_modal_projector"
VARIANTS = {
    "qwen2-tied": dict(),
    "llama-qknorm-rmsnorm-final-ln-untied": dict(
        text="llama", qk_norm=True, norm_type="rms_norm", mean_pooling=False, tie=False
    ),
    "qwen2-untied-layer-2": dict(mean_pooling=False, feature_layer=-2, tie=False),
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def case(request, tmp_path_factory):
    config = hf_internvl.internvl_config(**VARIANTS[request.param])
    directory = hf_internvl.save_internvl(str(tmp_path_factory.mktemp("internvl")), config, seed=3)
    model, processor = sgm_jax.load_model(directory)
    return model, processor, hf_internvl.load_internvl_reference(directory), directory


ONE = pytest.mark.parametrize("case", ["qwen2-tied"], indirect=True, ids=["qwen2-tied"])  # generic paths: one variant


def _valid(batch):
    return batch["attention_mask"].astype(bool)


@pytest.mark.parametrize("tiled", [False, True], ids=["one-tile", "tiles-and-thumbnail"])
def test_logits_and_every_intermediate_match_transformers(case, tiled):
    model, processor, hf, _ = case
    batch = hf_internvl.internvl_batch(processor, MIXED, crop_to_patches=tiled)
    tiles = len(batch["pixel_values"])
    assert (tiles > 3) == tiled
    ref = hf_internvl.internvl_reference(hf, batch)
    prepared = model_batch(model, batch)
    assert len(prepared["pixel_values"]) == 1 << (tiles - 1).bit_length()  # a power-of-two tile bucket
    model.model.multi_modal_projector.record = frozenset({OUT})
    try:
        out, sown = nnx.capture(model.forward, nnx.Intermediate)(
            prepared["input_ids"], attention_mask=prepared["attention_mask"], **image_inputs(prepared)
        )
    finally:
        model.model.multi_modal_projector.record = frozenset()
    for ours, theirs in zip(out["vision_hidden_states"], ref["vision_hidden_states"], strict=True):
        np.testing.assert_allclose(np.asarray(ours)[:tiles], theirs, atol=TOL, rtol=0)
    projector = dict(nnx.to_flat_state(sown))[("model", "multi_modal_projector", OUT)].get_value()[0]
    np.testing.assert_allclose(np.asarray(projector)[:tiles], ref["projector"], atol=TOL, rtol=0)

    length, valid = batch["input_ids"].shape[1], _valid(batch)
    stream = [np.asarray(h)[:, -length:] for h in out["text_stream"][:-1]] + [
        np.asarray(out["text_final"])[:, -length:]
    ]
    assert len(stream) == len(ref["hidden_states"])
    for ours, theirs in zip(stream, ref["hidden_states"]):
        assert np.abs(ours - theirs)[valid].max() <= TOL
    np.testing.assert_allclose(np.asarray(model(**batch))[valid], ref["logits"][valid], atol=TOL, rtol=0)


def test_one_tile_per_image_is_the_default_and_a_text_only_batch_matches(case):
    model, processor, hf, _ = case
    batch = hf_internvl.internvl_batch(processor, MIXED[:2])
    assert len(batch["pixel_values"]) == 3
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 3 * hf_internvl.TOKENS_PER_TILE
    text = hf_internvl.internvl_batch(processor, [("a red square", []), ("describe the picture please", [])])
    ref = hf_internvl.internvl_reference(hf, text)["logits"]
    assert np.abs(np.asarray(model(**text)) - ref)[_valid(text)].max() <= TOL


def _gates(model, seed):
    rng = np.random.default_rng(seed)
    names = [
        "model.language_model.layers.0.mlp.up_proj",
        "model.language_model.layers.1.mlp.down_proj:in",
        "model.vision_tower.encoder.layer.1.mlp.fc1",
        "model.vision_tower.encoder.layer.0.attention",
        f"{PROJECTOR}.linear_1",
        PROJECTOR,
    ]
    sites = list_sites(model)
    return Intervention({name: rng.uniform(0.2, 1.5, sites[name]).astype(np.float32) for name in names})


def test_sites_are_transformers_module_names(case):
    model, _, hf, _ = case
    sites, modules = list_sites(model), dict(hf.named_modules())
    assert {name.removesuffix(":in") for name in sites} <= set(modules)
    assert sites[f"{PROJECTOR}.linear_1"] == modules[f"{PROJECTOR}.linear_1"].out_features
    assert sites[f"{PROJECTOR}:in"] == 32 * 4  # the pixel-shuffled width


def test_greedy_generate_equals_transformers_with_and_without_gates(case):
    model, processor, hf, _ = case
    batch = hf_internvl.internvl_batch(processor, MIXED, seed=1)
    iv = _gates(model, 7)
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    hf_tiny.assert_generate_matches(model, hf, batch, iv, eos=eos, pad=pad)


def test_pooled_capture_equals_hooks_on_transformers(case):
    model, processor, hf, _ = case
    rows = MIXED[:2]
    batch = hf_internvl.internvl_batch(processor, rows, seed=2, crop_to_patches=True)
    sites = ["model.language_model.layers.1.mlp.up_proj", "model.vision_tower.encoder.layer.1.mlp.fc1", PROJECTOR]
    ours = sgm_jax.collect_responses(model, [batch], sites=sites)

    modules, seen = dict(hf.named_modules()), {}
    handles = [modules[s].register_forward_hook(lambda m, a, y, s=s: seen.__setitem__(s, y.numpy())) for s in sites]
    with torch.no_grad():
        hf(**{k: torch.tensor(v) for k, v in batch.items()})
    for h in handles:
        h.remove()
    runs = [
        n // hf_internvl.TOKENS_PER_TILE
        for row in batch["input_ids"]
        for n in np.diff(np.flatnonzero(np.diff(np.r_[0, row == model.image_token_id, 0])))[::2]
    ]
    edges, image_row, valid = np.concatenate([[0], np.cumsum(runs)]), [0, 1, 1], _valid(batch)
    for site in sites:
        if site.startswith("model.language_model"):
            expected = np.stack([seen[site][r][valid[r]].mean(0) for r in range(len(rows))])
        else:  # an image's tiles and positions, then a row's images
            per_image = [seen[site][a:b].mean((0, 1)) for a, b in zip(edges[:-1], edges[1:])]
            expected = np.stack([np.mean([p for p, r in zip(per_image, image_row) if r == row], 0) for row in range(2)])
        np.testing.assert_allclose(ours[site], expected, atol=1e-5, rtol=0, err_msg=site)


def test_export_with_gates_folded_loads_in_transformers(case, tmp_path):
    model, processor, _, _ = case
    alphas = {k: v for k, v in _gates(model, 9).alphas.items() if ":in" not in k}
    if model.spec.text.tie_word_embeddings:
        alphas = {k: v for k, v in alphas.items() if "embed_tokens" not in k}
    gated = sgm_jax.intervene(model, Intervention(alphas))
    exported = hf_internvl.load_internvl_reference(export_hf(gated, str(tmp_path / "export")))
    batch = hf_internvl.internvl_batch(processor, MIXED, seed=5)
    ref = hf_internvl.internvl_reference(exported, batch)["logits"]
    assert np.abs(np.asarray(gated(**batch)) - ref)[_valid(batch)].max() <= TOL


@ONE
def test_the_state_dict_layout_loads(case, tmp_path):
    model, processor, _, directory = case

    def to_state_dict(key):
        if key.startswith("language_model.lm_head."):
            return key.removeprefix("language_model.")
        return "model." + key.replace("language_model.model.", "language_model.", 1)

    batch = hf_internvl.internvl_batch(processor, MIXED, seed=6)
    out = hf_tiny.rewrite_keys(directory, str(tmp_path / "state"), to_state_dict)
    np.testing.assert_array_equal(np.asarray(sgm_jax.load_model(out)[0](**batch)), np.asarray(model(**batch)))


@ONE
def test_eight_device_mesh_gives_the_unsharded_logits(case):
    model, processor, _, directory = case
    sharded, _ = sgm_jax.load_model(directory, mesh=sharding.make_mesh(data=2, fsdp=2, tensor=2))
    batch = hf_internvl.internvl_batch(processor, MIXED, seed=7)
    np.testing.assert_allclose(np.asarray(sharded(**batch)), np.asarray(model(**batch)), atol=1e-5, rtol=0)
    assert jax.device_count() == 8


@ONE
def test_inputs_that_do_not_fit_are_refused_with_both_counts(case):
    model, processor, _, _ = case
    batch = hf_internvl.internvl_batch(processor, MIXED)
    with pytest.raises(ValueError, match=r"runs of \[4, 4, 4\] image tokens .* 2 tile\(s\) give 8 features"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:2]))
    with pytest.raises(ValueError, match=r"InternVL takes tiles \[tiles, 3, 28, 28\]"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:, :, :14]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(vision_feature_select_strategy="full"), "vision_feature_select_strategy='full'"),
        (lambda c: c.update(downsample_ratio=0.3), "downsample_ratio=0.3"),
        (lambda c: c["vision_config"].update(image_size=[28, 42]), r"image_size=\[28, 42\]"),
        (lambda c: c["text_config"].update(model_type="mistral"), "model_type='mistral'"),
    ],
)
def test_configs_asking_for_what_the_port_lacks_are_refused(edit, message, tmp_path):
    directory = hf_internvl.save_internvl(str(tmp_path), seed=1)
    hf_tiny.edit_config(directory, edit)
    with pytest.raises(UnsupportedConfigError, match=message):
        sgm_jax.load_model(directory)


def _drop_tie_field(directory):
    with open(f"{directory}/config.json") as f:
        config = json.load(f)
    del config["tie_word_embeddings"]
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config, f)


def test_a_missing_tie_field_means_tied_and_a_conflicting_head_is_named(tmp_path):
    tied = hf_internvl.save_internvl(str(tmp_path / "tied"), hf_internvl.internvl_config(), seed=1)
    _drop_tie_field(tied)
    hf = hf_internvl.load_internvl_reference(tied)
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()  # transformers ties too
    assert sgm_jax.load_model(tied)[0].lm_head is None
    # An untied checkpoint whose config lost the field: transformers warns and unties, sgm_jax says what is wrong.
    untied = hf_internvl.save_internvl(str(tmp_path / "untied"), hf_internvl.internvl_config(tie=False), seed=1)
    _drop_tie_field(untied)
    with pytest.raises(CheckpointError, match=r"lm_head.weight differs .*\(tie_word_embeddings=true\)"):
        sgm_jax.load_model(untied)
