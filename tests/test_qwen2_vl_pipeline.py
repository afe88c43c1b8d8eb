"""Qwen2.5-VL from the command line: one canonical image size gives every image one grid (one compile for a
sweep), and the size is part of the store's identity. Every command on every family: test_family_commands.py."""

import pytest

import hf_qwen
import hf_tiny
import sgm_jax
from sgm_jax import cli
from sgm_jax.data import read_jsonl
from sgm_jax.data.encode import SquareImages, encode
from sgm_jax.decoding.batching import collate
from sgm_jax.models.batch import model_batch
from sgm_jax.responses.store import ResponseStore, StoreError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-cli")
    directory = hf_qwen.save_qwen(str(root / "ckpt"), hf_qwen.qwen_config("2.5"), seed=11)
    hf_qwen.save_qwen_processor(directory, "2.5")
    return directory, hf_tiny.write_dataset(str(root / "data"), 20, seed=3)


def test_one_canonical_image_size_gives_one_grid_and_is_part_of_the_store(checkpoint, tmp_path, capsys):
    directory, data = checkpoint
    model, processor = sgm_jax.load_model(directory)
    square = SquareImages(processor, 16)
    samples = read_jsonl(data)[:3]
    grids = [encode(s, square)["image_grid_thw"].tolist() for s in samples]
    assert grids == [[[1, 8, 8]]] * 3 and len({encode(s, processor)["pixel_values"].shape for s in samples}) > 1
    batch = collate([encode(s, square) for s in samples], processor.tokenizer.pad_token_id)
    prepared = model_batch(model, batch)
    assert prepared.inputs["image_segments"].shape[1] == 64 and prepared.inputs["window_segments"].shape[1] == 16

    store = str(tmp_path / "store")
    args = ["collect", "--model", directory, "--data", data, "--out", store, "--quiet", "--image-size"]
    cli.main(args + ["16"])
    assert ResponseStore(store).manifest["image_size"] == 16
    with pytest.raises(StoreError, match="image_size: store has 16, asked for 24"):
        cli.run(args + ["24"])
