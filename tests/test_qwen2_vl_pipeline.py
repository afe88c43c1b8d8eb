"""The whole command-line pipeline on a tiny Qwen2.5-VL checkpoint: collect, score, intervention, generate, evaluate."""

import json

import numpy as np
import pytest
from PIL import Image

import hf_qwen
import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.batching import collate, model_batch
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import SquareImages, encode
from sgm_jax.data.samples import Sample
from sgm_jax.store import ResponseStore, StoreError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-cli")
    directory = hf_qwen.save_qwen(str(root / "ckpt"), hf_qwen.qwen_config("2.5"), seed=11)
    hf_qwen.save_qwen_processor(directory, "2.5")
    return directory, hf_tiny.write_dataset(str(root / "data"), 20, seed=3)


def test_collect_score_intervention_evaluate_and_generate(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    store, scores, iv = (str(tmp_path / name) for name in ("store", "scores.safetensors", "iv.safetensors"))
    vision_site = "model.visual.blocks.1.mlp.up_proj"
    cli.main(
        [
            "collect",
            "--model",
            directory,
            "--data",
            data,
            "--batch-size",
            "4",
            "--out",
            store,
            "--quiet",
            "--sites",
            "model.language_model.layers.*.mlp.up_proj",
            vision_site,
            "model.visual.merger",
        ]
    )
    assert "20 samples x 4 sites" in capsys.readouterr().out
    responses = ResponseStore(store)
    assert responses.load(vision_site).shape == (20, 48) and np.isfinite(responses.load("model.visual.merger")).all()

    cli.main(["score", "--store", store, "--out", scores, "--quiet"])
    cli.main(["intervention", "--scores", scores, "--threshold", "0.3", "--out", iv])
    assert sgm_jax.load_intervention(iv).num_changed() > 0
    capsys.readouterr()

    image = str(tmp_path / "image.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(image)
    cli.main(
        [
            "generate",
            "--model",
            directory,
            "--prompt",
            "describe the picture please",
            "--image",
            image,
            "--intervention",
            iv,
            "--max-new-tokens",
            "4",
        ]
    )
    model, processor = sgm_jax.load_model(directory)

    encoded = encode(Sample(id="x", prompt="describe the picture please", image=image), processor)
    assert set(encoded) == {"input_ids", "pixel_values", "image_grid_thw"}
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
        [
            "evaluate",
            "--model",
            directory,
            "--data",
            data,
            "--split",
            "test",
            "--intervention",
            iv,
            "--judge",
            f"lexicon:{lexicon}",
            "--neutral",
            str(neutral),
            "--max-new-tokens",
            "3",
            "--out",
            out,
            "--quiet",
        ]
    )
    results = json.loads(open(f"{out}/results.json").read())
    assert results["settings"]["after"]["harmful_rate"]["all"]["n"] > 0
    after = results["settings"]["after"]
    assert np.isfinite(after["perplexity"]) and np.isfinite(after["answer_perplexity"]) and after["perplexity"] > 1


def test_one_canonical_image_size_gives_one_grid_and_is_part_of_the_store(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    model, processor = sgm_jax.load_model(directory)
    square = SquareImages(processor, 16)
    samples = read_jsonl(data)[:3]
    grids = [encode(s, square)["image_grid_thw"].tolist() for s in samples]
    assert grids == [[[1, 8, 8]]] * 3 and len({encode(s, processor)["pixel_values"].shape for s in samples}) > 1
    batch = collate([encode(s, square) for s in samples], processor.tokenizer.pad_token_id)
    prepared = model_batch(model, batch)
    assert prepared["image_segments"].shape[1] == 64 and prepared["window_segments"].shape[1] == 16

    store = str(tmp_path / "store")
    args = ["collect", "--model", directory, "--data", data, "--out", store, "--quiet", "--image-size"]
    cli.main(args + ["16"])
    assert ResponseStore(store).manifest["image_size"] == 16
    with pytest.raises(StoreError, match="image_size: store has 16, asked for 24"):
        cli.main(args + ["24"])
