"""LLaVA-NeXT against transformers (fp32, eager): tile packing with `image_newline`, vision and projector states per
tile, decoder states, logits, greedy generation with and without gates, pooled capture, export, layouts, sharding."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import hf_next
import hf_tiny
import sgm_jax
from sgm_jax import sharding
from sgm_jax.batching import image_inputs, model_batch
from sgm_jax.export import export_hf
from sgm_jax.interventions import Intervention
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.llava_next import image_layout
from sgm_jax.models.site import OUT
from sgm_jax.sites import list_sites

TOL = 1e-4
S = hf_next.SIZES
# Three aspect ratios (both unpad branches), two images in one row, left padding, and a text-only row.
MIXED = [
    ("describe the picture please", [S["wide"]]),
    ("a red square above a blue circle", [S["tall"], S["square"]]),
    ("that is a nice word", []),
]
PROJECTOR = "model.multi_modal_projector"


@pytest.fixture(
    scope="module",
    params=[(4, False, -2), (2, True, [-3, -1])],
    ids=["mha-untied", "gqa-tied-two-layers"],
)
def case(request, tmp_path_factory):
    kv_heads, tie, layer = request.param
    config = hf_next.next_config(kv_heads=kv_heads, tie=tie, feature_layer=layer)
    directory = hf_next.save_next(str(tmp_path_factory.mktemp("next")), config, seed=3)
    model, processor = sgm_jax.load_model(directory)
    return model, processor, hf_next.load_next_reference(directory), directory


ONE = pytest.mark.parametrize("case", [(4, False, -2)], indirect=True, ids=["mha-untied"])  # generic paths


def _valid(batch):
    return batch["attention_mask"].astype(bool)


def _real_tiles(model, batch):
    """Our tile rows that are real tiles of an image, in image order (the rows transformers keeps)."""
    tiles = model.spec.max_tiles
    used = [image_layout(size, model.spec)[0] for size in batch["image_sizes"]]
    return np.concatenate([np.arange(i * tiles, i * tiles + n) for i, n in enumerate(used)])


def test_token_layout_is_the_processors_and_covers_both_unpad_branches(case):
    model, processor, _, _ = case
    per_tile = model.spec.features_per_image
    kept = {}
    for name, size in S.items():
        batch = hf_next.next_batch(processor, [("a", [size])])
        tiles, layout = image_layout(size, model.spec)
        assert len(layout) == int((batch["input_ids"] == model.image_token_id).sum()), name
        grid = layout[per_tile:]
        rows = int((grid < 0).sum())  # one newline closes each kept row
        kept[name] = (rows, len(grid) // rows - 1, tiles)
        assert (grid.reshape(rows, -1)[:, -1] == -1).all()
        assert set((grid[grid >= 0] // per_tile).tolist()) == set(range(1, tiles))  # every grid tile is used
    # 30x50 fits 2x2 tiles (an 8x8 grid) and loses rows to padding; 61x20 fits 2x1 (8x4) and loses columns.
    assert kept == {"wide": (4, 8, 5), "tall": (8, 2, 3), "square": (8, 8, 5)}


def test_logits_and_every_intermediate_match_transformers(case):
    model, processor, hf, _ = case
    batch = hf_next.next_batch(processor, MIXED)
    ref = hf_next.next_reference(hf, batch)
    prepared = model_batch(model, batch)
    model.model.multi_modal_projector.record = frozenset({OUT})
    try:
        out, sown = nnx.capture(model.forward, nnx.Intermediate)(
            prepared["input_ids"], attention_mask=prepared["attention_mask"], **image_inputs(prepared)
        )
    finally:
        model.model.multi_modal_projector.record = frozenset()
    real = _real_tiles(model, batch)
    for ours, theirs in zip(out["vision_hidden_states"], ref["vision_hidden_states"], strict=True):
        np.testing.assert_allclose(np.asarray(ours)[real], theirs, atol=TOL, rtol=0)
    projector = dict(nnx.to_flat_state(sown))[("model", "multi_modal_projector", OUT)].get_value()[0]
    np.testing.assert_allclose(np.asarray(projector)[real], ref["projector"], atol=TOL, rtol=0)

    length, valid = batch["input_ids"].shape[1], _valid(batch)
    stream = [np.asarray(h)[:, -length:] for h in out["text_stream"][:-1]] + [
        np.asarray(out["text_final"])[:, -length:]
    ]
    assert len(stream) == len(ref["hidden_states"])
    for ours, theirs in zip(stream, ref["hidden_states"]):
        assert np.abs(ours - theirs)[valid].max() <= TOL
    assert np.abs(np.asarray(out["logits"])[:, -length:] - ref["logits"])[valid].max() <= TOL
    np.testing.assert_allclose(np.asarray(model(**batch))[valid], ref["logits"][valid], atol=TOL, rtol=0)


def test_a_text_only_batch_matches_transformers(case):
    model, processor, hf, _ = case
    batch = hf_next.next_batch(processor, [("a red square", []), ("describe the picture please", [])])
    ref = hf_next.next_reference(hf, batch)["logits"]
    assert np.abs(np.asarray(model(**batch)) - ref)[_valid(batch)].max() <= TOL


def test_aspect_ratios_in_one_text_bucket_share_one_compiled_shape(case):
    model, processor, _, _ = case
    prompt = "describe the picture please"
    shapes = set()
    for second in ("wide", "tall"):  # the longest row fixes the bucket; the second image's tiling varies
        prepared = model_batch(model, hf_next.next_batch(processor, [(prompt, [S["wide"]]), (prompt, [S[second]])]))
        shapes.add(tuple((k, v.shape) for k, v in sorted(prepared.items())))
    assert len(shapes) == 1, shapes


def _gates(model, seed):
    rng = np.random.default_rng(seed)
    names = [
        "model.language_model.layers.0.mlp.up_proj",
        "model.language_model.layers.1.mlp.down_proj:in",
        "model.vision_tower.encoder.layers.1.mlp.fc1",
        f"{PROJECTOR}.linear_1",
        PROJECTOR,
    ]
    sites = list_sites(model)
    return Intervention({name: rng.uniform(0.2, 1.5, sites[name]).astype(np.float32) for name in names})


def test_sites_are_transformers_module_names(case):
    model, _, hf, _ = case
    sites = list_sites(model)
    modules = dict(hf.named_modules())
    assert {name.removesuffix(":in") for name in sites} <= set(modules)
    assert sites[f"{PROJECTOR}.linear_1"] == modules[f"{PROJECTOR}.linear_1"].out_features


def test_greedy_generate_equals_transformers_with_and_without_gates(case):
    model, processor, hf, _ = case
    batch = hf_next.next_batch(processor, MIXED, seed=1)
    iv = _gates(model, 7)
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    hf_tiny.assert_generate_matches(model, hf, batch, iv, eos=eos, pad=pad)


def test_pooled_capture_equals_hooks_on_transformers(case):
    model, processor, hf, _ = case
    rows = MIXED[:2]
    batch = hf_next.next_batch(processor, rows, seed=2)
    sites = ["model.language_model.layers.1.mlp.up_proj", "model.vision_tower.encoder.layers.1.mlp.fc1", PROJECTOR]
    ours = sgm_jax.collect_responses(model, [batch], sites=sites)

    modules, seen = dict(hf.named_modules()), {}
    handles = [modules[s].register_forward_hook(lambda m, a, y, s=s: seen.__setitem__(s, y.numpy())) for s in sites]
    with torch.no_grad():
        hf(**{k: torch.tensor(v) for k, v in batch.items()})
    for h in handles:
        h.remove()
    tiles = [image_layout(size, model.spec)[0] for size in batch["image_sizes"]]
    edges = np.concatenate([[0], np.cumsum(tiles)])
    image_row, valid = [0, 1, 1], _valid(batch)
    for site in sites:
        if site.startswith("model.language_model"):
            expected = np.stack([seen[site][r][valid[r]].mean(0) for r in range(len(rows))])
        else:  # an image's tiles and positions, then a row's images
            per_image = [seen[site][a:b].mean((0, 1)) for a, b in zip(edges[:-1], edges[1:])]
            expected = np.stack([np.mean([p for p, r in zip(per_image, image_row) if r == row], 0) for row in range(2)])
        np.testing.assert_allclose(ours[site], expected, atol=1e-5, rtol=0, err_msg=site)


def test_export_with_gates_folded_loads_in_transformers(case, tmp_path):
    model, processor, _, _ = case
    gated = sgm_jax.intervene(model, Intervention({k: v for k, v in _gates(model, 9).alphas.items() if ":in" not in k}))
    exported = hf_next.load_next_reference(export_hf(gated, str(tmp_path / "export")))
    batch = hf_next.next_batch(processor, MIXED, seed=5)
    ref = hf_next.next_reference(exported, batch)["logits"]
    assert np.abs(np.asarray(gated(**batch)) - ref)[_valid(batch)].max() <= TOL


@ONE
def test_the_hub_and_state_dict_layouts_load(case, tmp_path):
    model, processor, _, directory = case

    def to_hub(key):  # the hub's CLIP keys keep `vision_model.`
        return key.replace("vision_tower.", "vision_tower.vision_model.", 1)

    def to_state_dict(key):  # the names in memory
        if key.startswith("language_model.lm_head."):
            return key.removeprefix("language_model.")
        return "model." + key.replace("language_model.model.", "language_model.", 1)

    batch = hf_next.next_batch(processor, MIXED, seed=6)
    expected = np.asarray(model(**batch))
    for name, rename in (("hub", to_hub), ("state", to_state_dict)):
        out = hf_tiny.rewrite_keys(directory, str(tmp_path / name), rename)
        np.testing.assert_array_equal(np.asarray(sgm_jax.load_model(out)[0](**batch)), expected)


@ONE
def test_eight_device_mesh_gives_the_unsharded_logits(case):
    model, processor, _, directory = case
    sharded, _ = sgm_jax.load_model(directory, mesh=sharding.make_mesh(data=2, fsdp=2, tensor=2))
    batch = hf_next.next_batch(processor, MIXED, seed=7)
    np.testing.assert_allclose(np.asarray(sharded(**batch)), np.asarray(model(**batch)), atol=1e-5, rtol=0)
    assert jax.device_count() == 8


@ONE
def test_inputs_that_do_not_fit_are_refused_with_both_counts(case):
    model, processor, _, _ = case
    batch = hf_next.next_batch(processor, MIXED)
    swapped = dict(batch, image_sizes=batch["image_sizes"][[1, 0, 2]])
    n_wide, n_tall = (len(image_layout(S[k], model.spec)[1]) for k in ("wide", "tall"))
    with pytest.raises(
        ValueError, match=rf"a run of {n_wide} image tokens .* image 0 \(size \[61, 20\]\) needs {n_tall}"
    ):
        model(**swapped)
    with pytest.raises(ValueError, match="3 image_sizes"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:2]))
    with pytest.raises(ValueError, match="come together"):
        model(**{k: v for k, v in batch.items() if k != "image_sizes"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(vision_feature_select_strategy="full"), "vision_feature_select_strategy='full'"),
        (lambda c: c.update(image_grid_pinpoints=[[28, 50]]), "image_grid_pinpoints"),
    ],
)
def test_configs_asking_for_what_the_port_lacks_are_refused(edit, message, tmp_path):
    directory = hf_next.save_next(str(tmp_path), seed=1)
    hf_tiny.edit_config(directory, edit)
    with pytest.raises(UnsupportedConfigError, match=message):
        sgm_jax.load_model(directory)
