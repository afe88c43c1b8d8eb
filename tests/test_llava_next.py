"""LLaVA-NeXT's own paths: the token layout of tiles with `image_newline` is the processor's and covers both unpad
branches, and images of different aspect ratios in one text bucket share one compiled shape. What every family has
(parity with transformers, generation, capture, export, layouts, ...) is in test_families.py."""

import jax
import numpy as np
import pytest

import hf_next
import sgm_jax
from families import FAMILIES
from sgm_jax.models.batch import model_batch
from sgm_jax.models.llava_next import image_layout

S = hf_next.SIZES
CASE = FAMILIES["llava-next"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    directory = CASE.save(str(tmp_path_factory.mktemp("next")), seed=3)
    return sgm_jax.load_model(directory)


def test_token_layout_is_the_processors_and_covers_both_unpad_branches(loaded):
    model, processor = loaded
    per_tile = model.spec.features_per_image
    kept = {}
    for name, size in S.items():
        batch = CASE.batch(processor, [("a", [size])])
        tiles, layout = image_layout(size, model.spec)
        assert len(layout) == int((batch["input_ids"] == model.image_token_id).sum()), name
        grid = layout[per_tile:]
        rows = int((grid < 0).sum())  # one newline closes each kept row
        kept[name] = (rows, len(grid) // rows - 1, tiles)
        assert (grid.reshape(rows, -1)[:, -1] == -1).all()
        assert set((grid[grid >= 0] // per_tile).tolist()) == set(range(1, tiles))  # every grid tile is used
    # 30x50 fits 2x2 tiles (an 8x8 grid) and loses rows to padding; 61x20 fits 2x1 (8x4) and loses columns.
    assert kept == {"wide": (4, 8, 5), "tall": (8, 2, 3), "square": (8, 8, 5)}


def test_aspect_ratios_in_one_text_bucket_share_one_compiled_shape(loaded):
    model, processor = loaded
    prompt = "describe the picture please"
    shapes = set()
    for second in ("wide", "tall"):  # the longest row fixes the bucket; the second image's tiling varies
        prepared = model_batch(model, CASE.batch(processor, [(prompt, [S["wide"]]), (prompt, [S[second]])]))
        shapes.add((str(jax.tree.structure(prepared)), tuple(np.shape(x) for x in jax.tree.leaves(prepared))))
    assert len(shapes) == 1, shapes
