"""Qwen2-VL and Qwen2.5-VL against transformers (fp32, eager): vision blocks, merger, decoder states, logits,
greedy generation with and without gates, pooled capture, export and sharding, on tiny random checkpoints."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import hf_qwen
import hf_tiny
import sgm_jax
from sgm_jax import sharding
from sgm_jax.export import export_hf
from sgm_jax.interventions import Intervention
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.qwen2_vl import mrope_positions
from sgm_jax.models.site import OUT
from sgm_jax.sites import list_sites

TOL = 1e-4
VERSIONS = ("2", "2.5")
# Two images of different grids in one row, one image after left padding, and a text-only row.
MIXED = [
    ("describe the picture please", [hf_qwen.GRID_12x8, hf_qwen.GRID_4x4]),
    ("what is in this image", [hf_qwen.GRID_6x10]),
    ("a red square", []),
]
# Every image at one grid whose windows tile it (the canonical-resolution fast path).
UNIFORM = [
    ("describe the picture please", [hf_qwen.GRID_12x8, hf_qwen.GRID_12x8]),
    ("what is in this image", [hf_qwen.GRID_12x8]),
]


def _checkpoint(root, version, seed, *, processor=True, **config):
    directory = hf_qwen.save_qwen(str(root), hf_qwen.qwen_config(version, **config), seed)
    if processor:
        hf_qwen.save_qwen_processor(directory, version)
    return directory


@pytest.fixture(
    scope="module",
    params=[(v, kv, tie) for v in VERSIONS for kv, tie in ((2, False), (4, True))],
    ids=lambda p: f"qwen{p[0]}-{'gqa' if p[1] == 2 else 'mha-tied'}",
)
def case(request, tmp_path_factory):
    version, kv_heads, tie = request.param
    directory = _checkpoint(tmp_path_factory.mktemp("qwen"), version, seed=3, kv_heads=kv_heads, tie=tie)
    model, processor = sgm_jax.load_model(directory)
    return version, model, processor, hf_qwen.load_qwen_reference(directory, version), directory


ONE = pytest.mark.parametrize(
    "case", [(v, 2, False) for v in VERSIONS], indirect=True, ids=["qwen2-gqa", "qwen2.5-gqa"]
)


def _valid(batch):
    return batch["attention_mask"].astype(bool)


def _ours(model, batch):
    """Our forward on a batch as the processor gave it, with the merger's output recorded."""
    prepared = sgm_jax.batching.model_batch(model, batch)
    inputs = sgm_jax.batching.image_inputs(prepared)
    model.model.visual.merger.record = frozenset({OUT})
    try:
        out, sown = nnx.capture(model.forward, nnx.Intermediate)(
            prepared["input_ids"], attention_mask=prepared["attention_mask"], **inputs
        )
    finally:
        model.model.visual.merger.record = frozenset()
    length = batch["input_ids"].shape[1]  # the bucket pads more on the left
    merger = dict(nnx.to_flat_state(sown))[("model", "visual", "merger", OUT)].get_value()[0]
    return out, np.asarray(merger), length


def test_logits_and_every_intermediate_match_transformers(case):
    version, model, processor, hf, _ = case
    batch = hf_qwen.qwen_batch(processor, MIXED)
    ref = hf_qwen.qwen_reference_activations(hf, batch)
    out, merger, length = _ours(model, batch)
    valid, n = _valid(batch), len(batch["pixel_values"])

    positions, deltas = mrope_positions(
        batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"], model.image_token_id, model.spec.vision
    )
    np.testing.assert_array_equal(positions[:, valid], ref["positions"][:, valid])
    np.testing.assert_array_equal(deltas, ref["rope_deltas"][:, 0])

    for i, block in enumerate(out["vision_hidden_states"]):  # both in window order for 2.5
        np.testing.assert_allclose(np.asarray(block)[:n], ref[f"model.visual.blocks.{i}"], atol=TOL, rtol=0)
    np.testing.assert_allclose(merger[: n // 4], ref["model.visual.merger"], atol=TOL, rtol=0)
    stream = [np.asarray(h)[:, -length:] for h in out["text_stream"][:-1]] + [
        np.asarray(out["text_final"])[:, -length:]
    ]
    assert len(stream) == len(ref["hidden_states"])
    for ours, theirs in zip(stream, ref["hidden_states"]):
        assert np.abs(ours - theirs)[valid].max() <= TOL
    logits = np.asarray(out["logits"])[:, -length:]
    assert np.abs(logits - ref["logits"])[valid].max() <= TOL
    np.testing.assert_allclose(np.asarray(model(**batch))[valid], ref["logits"][valid], atol=TOL, rtol=0)


def test_one_canonical_resolution_runs_blockwise_and_exactly(case):
    version, model, processor, hf, _ = case
    batch = hf_qwen.qwen_batch(processor, UNIFORM, seed=4)
    prepared = sgm_jax.batching.model_batch(model, batch)
    patches = hf_qwen.GRID_12x8[0] * hf_qwen.GRID_12x8[1] // 4
    assert prepared["image_segments"].shape[1] == patches  # one block per image, no cross-image attention
    if version == "2.5":
        assert prepared["window_segments"].shape[1] == 16  # one block per 4x4-patch window
    ref = hf_qwen.qwen_reference_activations(hf, batch)["logits"]
    assert np.abs(np.asarray(model(**batch)) - ref)[_valid(batch)].max() <= TOL


def test_sites_are_transformers_module_names_with_their_widths(case):
    version, model, _, hf, _ = case
    sites = list_sites(model)
    modules = dict(hf.named_modules())
    assert {name.removesuffix(":in") for name in sites} <= set(modules)
    assert sites["model.visual.merger.mlp.0"] == 128 and sites["model.visual.merger"] == 64
    mlp = "fc1" if version == "2" else "up_proj"
    assert sites[f"model.visual.blocks.1.mlp.{mlp}"] == modules[f"model.visual.blocks.1.mlp.{mlp}"].out_features
    assert sites["model.language_model.layers.1.mlp.down_proj:in"] == 128


def _gates(model, seed):
    rng = np.random.default_rng(seed)
    mlp = "fc1" if not model.spec.vision.windowed else "up_proj"
    names = [
        "model.language_model.layers.0.mlp.up_proj",
        "model.language_model.layers.1.mlp.down_proj:in",
        f"model.visual.blocks.0.mlp.{mlp}",
        "model.visual.merger.mlp.0",
        "model.visual.merger",
    ]
    sites = list_sites(model)
    return Intervention({name: rng.uniform(0.2, 1.5, sites[name]).astype(np.float32) for name in names})


def test_greedy_generate_equals_transformers_with_and_without_gates(case):
    version, model, processor, hf, _ = case
    batch = hf_qwen.qwen_batch(processor, MIXED, seed=1)
    iv = _gates(model, 7)
    hf_tiny.assert_generate_matches(
        model,
        hf,
        batch,
        iv,
        eos=hf_qwen.IM_END,
        pad=hf_qwen.ENDOFTEXT,
        before=lambda: setattr(hf.model, "rope_deltas", None),
    )


def test_pooled_capture_equals_hooks_on_transformers(case):
    version, model, processor, hf, _ = case
    rows = MIXED[:2]
    batch = hf_qwen.qwen_batch(processor, rows, seed=2)
    mlp = "fc1" if version == "2" else "up_proj"
    sites = [
        "model.language_model.layers.1.mlp.up_proj",
        f"model.visual.blocks.1.mlp.{mlp}",
        "model.visual.merger.mlp.0",
        "model.visual.merger",
    ]
    ours = sgm_jax.collect_responses(model, [batch], sites=sites)

    modules, seen = dict(hf.named_modules()), {}
    handles = [modules[s].register_forward_hook(lambda m, a, y, s=s: seen.__setitem__(s, y.numpy())) for s in sites]
    hf.model.rope_deltas = None
    with torch.no_grad():
        hf(**{k: torch.tensor(v) for k, v in batch.items()})
    for h in handles:
        h.remove()
    patches = batch["image_grid_thw"].prod(1)  # images stay contiguous in window order, so ranges pool them
    bounds = {
        "patch": np.concatenate([[0], np.cumsum(patches)]),
        "merged": np.concatenate([[0], np.cumsum(patches // 4)]),
    }
    image_row = [0, 0, 1]
    valid = _valid(batch)
    for site in sites:
        if site.startswith("model.language_model"):
            expected = np.stack([seen[site][r][valid[r]].mean(0) for r in range(len(rows))])
        else:
            edges = bounds["patch" if ".blocks." in site else "merged"]
            per_image = [seen[site][a:b].mean(0) for a, b in zip(edges[:-1], edges[1:])]
            expected = np.stack([np.mean([p for p, r in zip(per_image, image_row) if r == row], 0) for row in range(2)])
        np.testing.assert_allclose(ours[site], expected, atol=1e-5, rtol=0, err_msg=site)


def test_export_with_gates_folded_loads_in_transformers(case, tmp_path):
    version, model, processor, _, _ = case
    gated = sgm_jax.intervene(model, Intervention({k: v for k, v in _gates(model, 9).alphas.items() if ":in" not in k}))
    out = export_hf(gated, str(tmp_path / "export"))
    exported = hf_qwen.load_qwen_reference(out, version)
    batch = hf_qwen.qwen_batch(processor, MIXED, seed=5)
    ref = hf_qwen.qwen_reference_activations(exported, batch)["logits"]
    assert np.abs(np.asarray(gated(**batch)) - ref)[_valid(batch)].max() <= TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_every_key_layout_and_a_flat_legacy_config_load(version, tmp_path):
    config = hf_qwen.qwen_config(version)
    reference = hf_qwen.save_qwen(str(tmp_path / "pretrained"), config, seed=5)
    variants = [
        hf_qwen.save_qwen(str(tmp_path / "state"), config, seed=5, layout="state_dict"),
        hf_qwen.save_qwen(str(tmp_path / "shards"), config, seed=5, max_shard_size="20KB"),
        hf_qwen.flatten_config(hf_qwen.save_qwen(str(tmp_path / "flat"), config, seed=5)),
    ]
    assert len(json.load(open(f"{variants[1]}/model.safetensors.index.json"))["weight_map"]) > 1
    processor = hf_qwen.save_qwen_processor(reference, version)
    batch = hf_qwen.qwen_batch(processor, MIXED, seed=6)
    expected = np.asarray(sgm_jax.load_model(reference)[0](**batch))
    for directory in variants:
        np.testing.assert_array_equal(np.asarray(sgm_jax.load_model(directory)[0](**batch)), expected)


@ONE
def test_eight_device_mesh_gives_the_unsharded_logits(case):
    version, model, processor, _, directory = case
    sharded, _ = sgm_jax.load_model(directory, mesh=sharding.make_mesh(data=2, fsdp=2, tensor=2))
    assert (
        len({s.device for s in sharded.model.language_model.layers[0].mlp.up_proj.kernel[...].addressable_shards}) > 1
    )
    batch = hf_qwen.qwen_batch(processor, MIXED, seed=7)
    np.testing.assert_allclose(np.asarray(sharded(**batch)), np.asarray(model(**batch)), atol=1e-5, rtol=0)
    assert jax.device_count() == 8


@ONE
def test_inputs_that_do_not_fit_are_refused_by_name(case):
    _, model, processor, _, _ = case
    batch = hf_qwen.qwen_batch(processor, MIXED)
    short = dict(batch, image_grid_thw=batch["image_grid_thw"][:2])
    with pytest.raises(ValueError, match="image_grid_thw implies"):
        model(**short)
    swapped = dict(batch, image_grid_thw=batch["image_grid_thw"][[1, 0, 2]])
    with pytest.raises(ValueError, match=r"runs of \[24, 4, 15\] image tokens .* images of \[4, 24, 15\] tokens"):
        model(**swapped)
    with pytest.raises(ValueError, match="video inputs are not supported"):
        model(**batch, pixel_values_videos=batch["pixel_values"], video_grid_thw=batch["image_grid_thw"])
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**dict(batch, mm_token_type_ids=np.zeros_like(batch["input_ids"])))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["text_config"].update(use_sliding_window=True), "use_sliding_window=True"),
        (lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[2, 2, 2]), "mrope_section"),
        (lambda c: c["vision_config"].update(hidden_act="relu2"), "hidden_act='relu2'"),
    ],
)
def test_configs_asking_for_what_the_port_lacks_are_refused(edit, message, tmp_path):
    directory = _checkpoint(tmp_path, "2.5", seed=1, processor=False)
    hf_tiny.edit_config(directory, edit)
    with pytest.raises(UnsupportedConfigError, match=message):
        sgm_jax.load_model(directory)


def test_plain_qwen2_lm_matches_transformers(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(config)
    hf_tiny.randomize(hf, 1)
    hf.save_pretrained(str(tmp_path))
    hf = hf_tiny.load_reference(str(tmp_path), Qwen2ForCausalLM)
    model, _ = sgm_jax.load_model(str(tmp_path))
    assert (
        model.model.layers[0].self_attn.q_proj.bias is not None and model.model.layers[0].self_attn.o_proj.bias is None
    )
    ids = np.random.default_rng(0).integers(0, 120, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(hf_tiny.generate_positions(mask)),
        ).logits.numpy()
    assert np.abs(np.asarray(model(ids, attention_mask=mask)) - ref)[mask.astype(bool)].max() <= TOL
