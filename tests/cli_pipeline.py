"""The command-line pipeline every family's test runs: collect at decoder and image-domain sites, score, build the
SGM intervention, generate one prompt (the CLI prints what the API generates) and evaluate before and after."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import sgm_jax
from sgm_jax import cli
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.store import ResponseStore

PROMPT = "describe the picture please"


def run_pipeline(directory: str, data: str, tmp_path, capsys, sites: dict[str, int]) -> dict:
    """Run every command on `directory` and `data` and check each; returns the encoded generate prompt.

    `sites` are image-domain sites with their expected widths (their pooled rows must be finite too); the
    decoder's `up_proj` of every layer is collected besides them.
    """
    store, scores, iv = (str(tmp_path / name) for name in ("store", "scores.safetensors", "iv.safetensors"))
    all_sites = ["model.language_model.layers.*.mlp.up_proj", *sites]
    cli.main(
        ["collect", "--model", directory, "--data", data, "--batch-size", "4", "--out", store, "--quiet"]
        + ["--sites", *all_sites]
    )
    model, processor = sgm_jax.load_model(directory)
    layers = len(model.model.language_model.layers)
    assert f"20 samples x {layers + len(sites)} sites" in capsys.readouterr().out
    responses = ResponseStore(store)
    for site, width in sites.items():
        values = responses.load(site)
        assert values.shape == (20, width) and np.isfinite(values).all(), site

    cli.main(["score", "--store", store, "--out", scores, "--quiet"])
    cli.main(["intervention", "--scores", scores, "--threshold", "0.3", "--out", iv])
    assert sgm_jax.load_intervention(iv).num_changed() > 0
    capsys.readouterr()

    image = str(tmp_path / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 20, 3), dtype=np.uint8)).save(image)
    generate = ["generate", "--model", directory, "--prompt", PROMPT, "--image", image, "--intervention", iv]
    cli.main(generate + ["--max-new-tokens", "4"])
    encoded = encode(Sample(id="x", prompt=PROMPT, image=image), processor)
    gated = sgm_jax.intervene(model, sgm_jax.load_intervention(iv))
    images = {k: v for k, v in encoded.items() if k != "input_ids"}
    tokens = sgm_jax.generate(gated, encoded["input_ids"][None], max_new_tokens=4, **images)
    assert capsys.readouterr().out.strip() == processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()

    lexicon, neutral = tmp_path / "lexicon.txt", tmp_path / "neutral.txt"
    lexicon.write_text("bad\nword\n")
    neutral.write_text(f"a red square above a blue circle\n{PROMPT}\n")
    out = str(tmp_path / "eval")
    options = ["--judge", f"lexicon:{lexicon}", "--neutral", str(neutral), "--max-new-tokens", "3", "--out", out]
    # SGM* on every family: the shield, ECSO around it, SafeCoDe's two views (the safe branch: a tiny tokenizer
    # may write none of the refusal phrases the unsafe branch forces) with the intervention's gates.
    defenses = ["--defense", "shield", "--defense", "ecso", "--defense", "safecode", "--safecode-verdicts", "safe"]
    cli.main(
        ["evaluate", "--model", directory, "--data", data, "--split", "test", "--intervention", iv, *options, "--quiet"]
        + defenses
    )
    results = json.loads(open(f"{out}/results.json").read())
    assert [d["name"] for d in results["defenses"]] == ["shield", "ecso", "safecode"]
    after = results["settings"]["after"]
    assert after["harmful_rate"]["all"]["n"] > 0
    assert np.isfinite(after["perplexity"]) and np.isfinite(after["answer_perplexity"]) and after["perplexity"] > 1
    return encoded
