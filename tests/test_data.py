"""The native JSONL format: strict reading with file:line errors, content hashing, chat-template encoding."""

import json
import os

import numpy as np
import pytest

import hf_tiny
import sgm_jax
from sgm_jax.data import DatasetError, dataset_hash, read_jsonl, write_jsonl
from sgm_jax.data.encode import encode, render
from sgm_jax.decoding.batching import collate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return sgm_jax.load_model(hf_tiny.save_tiny(tmp_path_factory.mktemp("ckpt"), seed=1, processor=True))


def _write(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_reads_fields_resolves_images_and_filters_splits(tmp_path):
    path = hf_tiny.write_dataset(str(tmp_path), 10)
    samples = read_jsonl(path)
    assert [s.id for s in samples] == [f"s{i}" for i in range(10)]
    assert samples[0].label == 1 and samples[1].label == 0 and samples[0].category == "c0"
    assert samples[3].image == os.path.join(str(tmp_path), "images", "3.png")
    assert [s.id for s in read_jsonl(path, split="test")] == ["s0", "s5"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a", "prompt": "hi"', r"d.jsonl:2: not valid JSON"),
        ('{"id": "a", "prompt": "hi", "lable": 1}', r"d.jsonl:2: unknown fields \['lable'\]"),
        ('{"id": "a"}', r"d.jsonl:2: missing 'prompt'"),
        ('{"id": "a", "prompt": "hi", "label": 2}', r"d.jsonl:2: label must be 0 or 1, got 2"),
        ('{"id": "x", "prompt": "hi"}', r"d.jsonl:2: id 'x' already used at .*d.jsonl:1"),
        ('{"id": "a", "prompt": "hi", "image": "nope.png"}', r"d.jsonl:2: image 'nope.png' not found"),
        ("[1, 2]", r"d.jsonl:2: expected a JSON object"),
        ('{"id": "a", "prompt": "hi", "image": 5}', r"d.jsonl:2: 'image' must be a string, got 5"),
        ('{"id": "a", "prompt": "hi", "response": ["no"]}', r"d.jsonl:2: 'response' must be a string, got \['no'\]"),
        ('{"id": true, "prompt": "hi"}', r"d.jsonl:2: 'id' must be a string or an integer, got True"),
        ('{"id": "a", "prompt": "hi", "meta": 3}', r"d.jsonl:2: 'meta' must be an object, got 3"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, ['{"id": "x", "prompt": "first"}', line])
    with pytest.raises(DatasetError, match=message):
        read_jsonl(path)


def test_missing_images_can_be_skipped_and_counted(tmp_path, capsys):
    path = _write(tmp_path, ['{"id": "x", "prompt": "a"}', '{"id": "y", "prompt": "b", "image": "gone.png"}'])
    assert [s.id for s in read_jsonl(path, skip_missing_images=True)] == ["x"]
    assert "skipped 1 rows whose image is missing" in capsys.readouterr().err


def test_empty_file_and_empty_split_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="no samples"):
        read_jsonl(_write(tmp_path, [""]))
    with pytest.raises(DatasetError, match="no samples in split 'dev'"):
        read_jsonl(_write(tmp_path, ['{"id": "x", "prompt": "a", "split": "train"}']), split="dev")


def test_dataset_hash_follows_content_and_image_bytes(tmp_path):
    path = hf_tiny.write_dataset(str(tmp_path), 4)
    before = dataset_hash(read_jsonl(path))
    assert dataset_hash(read_jsonl(path)) == before
    with open(os.path.join(str(tmp_path), "images", "2.png"), "ab") as f:
        f.write(b"\0")
    assert dataset_hash(read_jsonl(path)) != before


def test_encoding_uses_the_chat_template_and_fills_image_tokens(checkpoint, tmp_path):
    model, processor = checkpoint
    samples = read_jsonl(hf_tiny.write_dataset(str(tmp_path), 3))
    text = render(samples[0], processor)
    assert text == "USER: <image>\ndescribe the picture please ASSISTANT: that is a bad word</s>"
    prompt_only = render(type(samples[0])(id="q", prompt="hi", image=samples[0].image), processor)
    assert prompt_only.endswith("ASSISTANT:")
    encoded = [encode(s, processor) for s in samples]
    assert (encoded[0]["input_ids"] == model.image_token_id).sum() == model.spec.features_per_image
    batch = collate(encoded)
    assert batch["pixel_values"].shape == (3, 3, 28, 28)
    lengths = [len(e["input_ids"]) for e in encoded]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["attention_mask"][np.argmin(lengths), 0] == 0  # padding is on the left


def test_encodings_are_reused_until_what_they_render_from_changes(checkpoint, tmp_path):
    from PIL import Image

    _, processor = checkpoint
    sample = read_jsonl(hf_tiny.write_dataset(str(tmp_path), 1))[0]
    first = encode(sample, processor)
    again = encode(sample, processor)
    assert again is not first and again["pixel_values"] is first["pixel_values"]  # a new dict, the same arrays
    with pytest.raises(ValueError, match="read-only"):
        first["input_ids"][0] = 0
    Image.new("RGB", (40, 30), (255, 255, 255)).save(sample.image)  # the file rewritten: encoded again
    white = encode(sample, processor)
    assert not np.array_equal(white["pixel_values"], first["pixel_values"])
    with_reply = encode(type(sample)(id="other", prompt=sample.prompt, image=sample.image, response="ok"), processor)
    assert len(with_reply["input_ids"]) != len(white["input_ids"])
    template = processor.chat_template
    processor.chat_template = "a new preamble " + template
    try:
        assert len(encode(sample, processor)["input_ids"]) != len(white["input_ids"])  # the new template applies
    finally:
        processor.chat_template = template


def test_written_samples_read_back_identically(tmp_path):
    samples = read_jsonl(hf_tiny.write_dataset(str(tmp_path / "a"), 6))
    samples[1] = type(samples[1])(
        id="mcq",
        prompt="which colour?",
        image=samples[1].image,
        options=("red", "blue"),
        answer="A",
        condition="typo",
        meta={"source": "test"},
    )
    out = tmp_path / "b" / "copy.jsonl"
    out.parent.mkdir()
    write_jsonl(samples, str(out))
    with pytest.raises(DatasetError, match=r"copy.jsonl:1: image '../a/images/0.png' lies outside .*--allow-outside"):
        read_jsonl(str(out))
    assert read_jsonl(str(out), allow_outside_images=True) == samples
    assert json.loads(out.read_text().splitlines()[0])["image"] == "../a/images/0.png"
