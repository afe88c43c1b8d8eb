"""LLaVA-NeXT samples of different tile counts batch as its processor pads them and give each row's own logits.
Every command on every family: test_family_commands.py."""

import numpy as np
import pytest
from PIL import Image

import hf_next
import hf_tiny
import sgm_jax
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.batching import collate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("next-cli")
    directory = hf_next.save_next(str(root / "ckpt"), seed=11)
    return directory, hf_tiny.write_dataset(str(root / "data"), 20, seed=3)


def _image(path, height, width, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_samples_of_different_tile_counts_batch_as_the_processor_pads_them(checkpoint, tmp_path):
    directory, _ = checkpoint
    model, processor = sgm_jax.load_model(directory)
    samples = [
        Sample(id=name, prompt="describe the picture please", image=_image(tmp_path / f"{name}.png", *size))
        for name, size in hf_next.SIZES.items()
    ]
    encoded = [encode(s, processor) for s in samples]
    assert {e["pixel_values"].shape[1] for e in encoded} == {3, 5}
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (3, 5, 3, 28, 28)
    tall = batch["pixel_values"][list(hf_next.SIZES).index("tall")]
    assert not tall[3:].any() and tall[:3].any()  # the 3-tile image's missing tiles are zeros
    together = np.asarray(model(**batch))
    for row, e in enumerate(encoded):
        alone = np.asarray(model(e["input_ids"][None], **{k: v for k, v in e.items() if k != "input_ids"}))
        n = e["input_ids"].shape[0]
        np.testing.assert_allclose(together[row, -n:], alone[0], atol=1e-4, rtol=0)
