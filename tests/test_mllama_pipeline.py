"""The whole command-line pipeline on a tiny Llama-3.2-Vision checkpoint: collect, score, intervention, generate,
evaluate."""

import json

import numpy as np
import pytest
from PIL import Image

import hf_mllama
import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.store import ResponseStore


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllama-cli")
    directory = hf_mllama.save_mllama(str(root / "ckpt"), seed=11)
    return directory, hf_tiny.write_dataset(str(root / "data"), 20, seed=3)


def test_collect_score_intervention_evaluate_and_generate(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    store, scores, iv = (str(tmp_path / name) for name in ("store", "scores.safetensors", "iv.safetensors"))
    vision_site = "model.vision_model.global_transformer.layers.1.mlp.fc1"
    sites = ["model.language_model.layers.*.mlp.up_proj", vision_site, "model.multi_modal_projector"]
    cli.main(
        ["collect", "--model", directory, "--data", data, "--batch-size", "4", "--out", store, "--quiet"]
        + ["--sites", *sites]
    )
    assert "20 samples x 7 sites"  # 5 decoder layers in capsys.readouterr().out
    responses = ResponseStore(store)
    assert responses.load(vision_site).shape == (20, 64)  # the global MLP's fc1
    assert np.isfinite(responses.load("model.multi_modal_projector")).all()

    cli.main(["score", "--store", store, "--out", scores, "--quiet"])
    cli.main(["intervention", "--scores", scores, "--threshold", "0.3", "--out", iv])
    assert sgm_jax.load_intervention(iv).num_changed() > 0
    capsys.readouterr()

    image = str(tmp_path / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 20, 3), dtype=np.uint8)).save(image)
    prompt = "describe the picture please"
    cli.main(
        ["generate", "--model", directory, "--prompt", prompt, "--image", image, "--intervention", iv]
        + ["--max-new-tokens", "4"]
    )
    model, processor = sgm_jax.load_model(directory)
    encoded = encode(Sample(id="x", prompt=prompt, image=image), processor)
    assert set(encoded) == {
        "input_ids",
        "pixel_values",
        "aspect_ratio_ids",
        "aspect_ratio_mask",
    }  # the cross mask is derived
    gated = sgm_jax.intervene(model, sgm_jax.load_intervention(iv))
    images = {k: v for k, v in encoded.items() if k != "input_ids"}
    tokens = sgm_jax.generate(gated, encoded["input_ids"][None], max_new_tokens=4, **images)
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
