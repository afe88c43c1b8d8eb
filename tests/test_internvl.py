"""InternVL's own paths: tiles with the thumbnail (`crop_to_patches`) against transformers, every InternViT state
and the projector per tile, in a power-of-two tile bucket; one tile per image by default; and the tie rules (a
missing `tie_word_embeddings` means tied, as transformers reads it; a head that then differs is named). What every
family has (parity on one tile per image for each variant, generation, capture, export, ...) is in
test_families.py."""

import json

import numpy as np
import pytest

import hf_internvl
import sgm_jax
from families import FAMILIES, our_activations
from sgm_jax.models.batch import model_batch
from sgm_jax.runtime.errors import CheckpointError

TOL = 1e-4
CASE = FAMILIES["internvl"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    directory = CASE.save(str(tmp_path_factory.mktemp("internvl")), seed=3)
    model, processor = sgm_jax.load_model(directory)
    return model, processor, CASE.load_reference(directory)


def test_tiles_and_thumbnail_match_transformers(loaded):
    model, processor, hf = loaded
    batch = CASE.batch(processor, crop_to_patches=True)
    tiles = len(batch["pixel_values"])
    assert tiles > 3  # more tiles than the three images
    assert len(model_batch(model, batch).inputs["pixel_values"]) == 1 << (tiles - 1).bit_length()  # the bucket
    ours, ref = our_activations(CASE, model, batch), CASE.reference(hf, batch)
    for i, (a, b) in enumerate(zip(ours["vision"], ref["vision"], strict=True)):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=f"vision state {i}")
    np.testing.assert_allclose(ours["projector"], ref["projector"], atol=TOL, rtol=0)
    valid = batch["attention_mask"].astype(bool)
    for i, (a, b) in enumerate(zip(ours["hidden_states"], ref["hidden_states"], strict=True)):
        assert np.abs(a - b)[valid].max() <= TOL, f"decoder hidden state {i}"
    assert np.abs(ours["logits"] - ref["logits"])[valid].max() <= TOL


def test_one_tile_per_image_is_the_default(loaded):
    model, processor, _ = loaded
    batch = CASE.batch(processor)
    assert len(batch["pixel_values"]) == 3
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 3 * hf_internvl.TOKENS_PER_TILE


def _drop_tie_field(directory):
    with open(f"{directory}/config.json") as f:
        config = json.load(f)
    del config["tie_word_embeddings"]
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config, f)


def test_a_missing_tie_field_means_tied_and_a_conflicting_head_is_named(tmp_path):
    tied = hf_internvl.save_internvl(str(tmp_path / "tied"), hf_internvl.internvl_config(), seed=1)
    _drop_tie_field(tied)
    hf = CASE.load_reference(tied)
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()  # transformers ties too
    assert sgm_jax.load_model(tied)[0].lm_head is None
    # An untied checkpoint whose config lost the field: transformers warns and unties, sgm_jax says what is wrong.
    untied = hf_internvl.save_internvl(str(tmp_path / "untied"), hf_internvl.internvl_config(tie=False), seed=1)
    _drop_tie_field(untied)
    with pytest.raises(CheckpointError, match=r"lm_head.weight differs .*\(tie_word_embeddings=true\)"):
        sgm_jax.load_model(untied)
