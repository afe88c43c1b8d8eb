"""Qwen2-VL's and Qwen2.5-VL's own paths against transformers: the M-RoPE positions (three axes, mask-aware, with
each row's delta), one canonical resolution run blockwise (one attention block per image, one per window in
Qwen2.5) and exactly, and the hub's flat legacy config. What every family has is in test_families.py."""

import shutil

import numpy as np
import pytest

import hf_qwen
import sgm_jax
from families import FAMILIES
from sgm_jax.models.batch import model_batch
from sgm_jax.models.qwen2_vl import mrope_positions

TOL = 1e-4
# Every image at one grid whose windows tile it (the canonical-resolution fast path).
UNIFORM = [
    ("describe the picture please", [hf_qwen.GRID_12x8, hf_qwen.GRID_12x8]),
    ("what is in this image", [hf_qwen.GRID_12x8]),
]


@pytest.fixture(scope="module", params=["qwen2-vl", "qwen2.5-vl"])
def qwen(request, tmp_path_factory):
    case = FAMILIES[request.param]
    directory = case.save(str(tmp_path_factory.mktemp(request.param)), seed=3)
    model, processor = sgm_jax.load_model(directory)
    return case, model, processor, case.load_reference(directory), directory


def _valid(batch):
    return batch["attention_mask"].astype(bool)


def test_mrope_positions_and_deltas_are_transformers(qwen):
    case, model, processor, hf, _ = qwen
    batch = case.batch(processor)  # two images in a row, one after left padding, a text-only row
    ref_positions, ref_deltas = hf_qwen.qwen_positions(hf, batch)
    positions, deltas = mrope_positions(
        batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"], model.image_token_id, model.spec.vision
    )
    valid = _valid(batch)
    np.testing.assert_array_equal(positions[:, valid], ref_positions[:, valid])
    np.testing.assert_array_equal(deltas, ref_deltas)


def test_one_canonical_resolution_runs_blockwise_and_exactly(qwen):
    case, model, processor, hf, _ = qwen
    batch = case.batch(processor, UNIFORM, seed=4)
    prepared = model_batch(model, batch)
    patches = hf_qwen.GRID_12x8[0] * hf_qwen.GRID_12x8[1] // 4
    assert prepared.inputs["image_segments"].shape[1] == patches  # one block per image, no cross-image attention
    if model.spec.vision.windowed:
        assert prepared.inputs["window_segments"].shape[1] == 16  # one block per 4x4-patch window
    ref = case.reference(hf, batch)["logits"]
    assert np.abs(np.asarray(model(**batch)) - ref)[_valid(batch)].max() <= TOL


def test_the_hubs_flat_legacy_config_loads(qwen, tmp_path):
    case, model, processor, _, directory = qwen
    flat = hf_qwen.flatten_config(shutil.copytree(directory, tmp_path / "flat"))
    batch = case.batch(processor, seed=6)
    np.testing.assert_array_equal(np.asarray(sgm_jax.load_model(str(flat))[0](**batch)), np.asarray(model(**batch)))
