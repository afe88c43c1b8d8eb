"""The model organism: its synthetic data is deterministic, and the bundled checkpoint loads and runs exactly."""

import dataclasses
import hashlib
import json
import os
from importlib.resources import files

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

import sgm_jax
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import encode, render
from sgm_jax.data.synthetic import FILES, LEXICON, Composition, write_dataset
from sgm_jax.judges.lexicon import LexiconJudge

# The organism as the installed package carries it (package data), not as a checkout path.
ORGANISM = str(files("sgm_jax.bundled") / "organism")
SMALL = Composition(
    train_shape_scenes=12,
    train_word_scenes=6,
    test_shape_scenes=6,
    test_word_scenes=4,
    mcq_train=5,
    mcq_test=5,
    neutral_train=5,
    neutral_test=5,
)


def _digest(directory: str) -> dict[str, str]:
    """The hash of every file under `directory`, by relative path."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("mm_toxic_qa"))
    return directory, write_dataset(directory, seed=0, composition=SMALL)


@pytest.fixture(scope="module")
def organism():
    return sgm_jax.load_model(ORGANISM)


def test_same_seed_writes_identical_files_and_images(dataset, tmp_path):
    directory, paths = dataset
    assert sorted(paths) == sorted(FILES)
    write_dataset(str(tmp_path), seed=0, composition=SMALL)
    first = _digest(directory)
    assert any(name.startswith("images") for name in first)
    assert _digest(str(tmp_path)) == first


def test_another_seed_writes_different_data(dataset, tmp_path):
    write_dataset(str(tmp_path), seed=1, composition=SMALL)
    other, first = _digest(str(tmp_path)), _digest(dataset[0])
    for name in ("train.jsonl", "test.jsonl", "mcq_test.jsonl", "neutral.txt"):
        assert other[name] != first[name], name
    assert other["lexicon.txt"] == first["lexicon.txt"]


def test_labels_agree_with_the_lexicon_judge(dataset):
    _, paths = dataset
    judge = LexiconJudge(paths["lexicon.txt"])
    assert judge.matches(" ".join(LEXICON)) == list(LEXICON)
    samples = read_jsonl(paths["train.jsonl"]) + read_jsonl(paths["test.jsonl"])
    assert {s.condition for s in samples if s.label == 1} == {"standard", "trigger", "typo"}
    for s in samples:
        assert judge.judge(s.prompt, s.response).harmful == (s.label == 1), s


def test_multiple_choice_items_are_well_formed(dataset):
    for s in read_jsonl(dataset[1]["mcq_test.jsonl"]):
        assert len(s.options) == 4 and len(set(s.options)) == 4 and s.answer in "ABCD"


def test_bundled_card_says_how_to_regenerate_its_data():
    with open(os.path.join(ORGANISM, "metrics.json"), encoding="utf-8") as f:
        card = json.load(f)
    assert card["dataset"]["seed"] == card["recipe"]["data_seed"]
    assert Composition(**card["dataset"]["composition"]) == Composition()


def test_bundled_processor_encodes_a_generated_sample(organism, dataset):
    model, processor = organism
    sample = read_jsonl(dataset[1]["test.jsonl"])[0]
    text = render(sample, processor)
    assert text.startswith("USER: <image>\n") and text.endswith("</s>")
    ids = encode(sample, processor)["input_ids"]
    assert (ids == model.image_token_id).sum() == model.spec.features_per_image == 16
    assert processor.tokenizer.unk_token_id not in ids
    prompt = encode(dataclasses.replace(sample, response=None), processor)["input_ids"]
    assert processor.tokenizer.decode(prompt[-2:]) == "assistant :"


def test_bundled_organism_matches_transformers(organism, dataset):
    model, processor = organism
    samples = read_jsonl(dataset[1]["test.jsonl"])[:2] + read_jsonl(dataset[1]["mcq_test.jsonl"])[:1]
    encoded = [encode(s, processor) for s in samples]
    length = max(len(e["input_ids"]) for e in encoded)
    ids = np.full((len(encoded), length), processor.tokenizer.pad_token_id, np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, length - len(e["input_ids"]) :], mask[row, length - len(e["input_ids"]) :] = e["input_ids"], 1
    pixels = np.concatenate([e["pixel_values"] for e in encoded])
    ours = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    reference = LlavaForConditionalGeneration.from_pretrained(
        ORGANISM, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    position_ids = np.where(mask > 0, np.cumsum(mask, -1) - 1, 1)
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.from_numpy(ids),
            pixel_values=torch.from_numpy(pixels),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(position_ids),
        ).logits
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], theirs.numpy()[valid], atol=1e-4, rtol=0)
