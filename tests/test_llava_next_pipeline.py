"""The whole command-line pipeline on a tiny LLaVA-NeXT checkpoint: collect, score, intervention, generate, evaluate."""

import json

import numpy as np
import pytest
from PIL import Image

import hf_next
import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.batching import collate
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.store import ResponseStore


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


def test_collect_score_intervention_evaluate_and_generate(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    store, scores, iv = (str(tmp_path / name) for name in ("store", "scores.safetensors", "iv.safetensors"))
    vision_site = "model.vision_tower.encoder.layers.1.mlp.fc1"
    sites = ["model.language_model.layers.*.mlp.up_proj", vision_site, "model.multi_modal_projector"]
    cli.main(
        ["collect", "--model", directory, "--data", data, "--batch-size", "4", "--out", store, "--quiet"]
        + ["--sites", *sites]
    )
    assert "20 samples x 4 sites" in capsys.readouterr().out
    responses = ResponseStore(store)
    assert responses.load(vision_site).shape == (20, 48)
    assert np.isfinite(responses.load("model.multi_modal_projector")).all()

    cli.main(["score", "--store", store, "--out", scores, "--quiet"])
    cli.main(["intervention", "--scores", scores, "--threshold", "0.3", "--out", iv])
    assert sgm_jax.load_intervention(iv).num_changed() > 0
    capsys.readouterr()

    image = _image(tmp_path / "image.png", 61, 20)
    prompt = "describe the picture please"
    cli.main(
        ["generate", "--model", directory, "--prompt", prompt, "--image", image, "--intervention", iv]
        + ["--max-new-tokens", "4"]
    )
    model, processor = sgm_jax.load_model(directory)
    encoded = encode(Sample(id="x", prompt=prompt, image=image), processor)
    assert set(encoded) == {"input_ids", "pixel_values", "image_sizes"}
    gated = sgm_jax.intervene(model, sgm_jax.load_intervention(iv))
    tokens = sgm_jax.generate(
        gated, encoded["input_ids"][None], max_new_tokens=4, **{k: v for k, v in encoded.items() if k != "input_ids"}
    )
    assert capsys.readouterr().out.strip() == processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()

    lexicon, neutral = tmp_path / "lexicon.txt", tmp_path / "neutral.txt"
    lexicon.write_text("bad\nword\n")
    neutral.write_text("a red square above a blue circle\ndescribe the picture please\n")
    out = str(tmp_path / "eval")
    cli.main(
        ["evaluate", "--model", directory, "--data", data, "--split", "test", "--intervention", iv]
        + ["--judge", f"lexicon:{lexicon}", "--neutral", str(neutral), "--max-new-tokens", "3", "--out", out, "--quiet"]
    )
    after = json.loads(open(f"{out}/results.json").read())["settings"]["after"]
    assert after["harmful_rate"]["all"]["n"] > 0
    assert np.isfinite(after["perplexity"]) and np.isfinite(after["answer_perplexity"]) and after["perplexity"] > 1
