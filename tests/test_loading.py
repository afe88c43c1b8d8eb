"""load_model: sharded files, dtypes, tied heads, the HF cache and processors (each family's key layouts are in
test_families.py)."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from safetensors.torch import load_file, save_file

import hf_tiny
import sgm_jax
from sgm_jax.runtime.errors import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint as `save_pretrained` writes it today, and its in-memory state dict."""
    return hf_tiny.save_tiny(tmp_path_factory.mktemp("saved"), seed=11, kv_heads=2)


def _params(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


def test_sharded_checkpoint_loads_identically(saved, tmp_path):
    directory = str(tmp_path / "sharded")
    hf_tiny.load_reference(saved).save_pretrained(directory, max_shard_size="40KB")
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    assert len([n for n in os.listdir(directory) if n.endswith(".safetensors")]) > 2
    _assert_same_params(sgm_jax.load_model(directory)[0], sgm_jax.load_model(saved)[0])


def test_bfloat16_loads_and_runs_close_to_float32(saved):
    model32, _ = sgm_jax.load_model(saved)
    model16, _ = sgm_jax.load_model(saved, dtype="bfloat16")
    assert {v.dtype for _, v in nnx.to_flat_state(nnx.state(model16, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    n = model32.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(4, pads=[0, 4], length=n + 16, features_per_image=n)
    a = np.asarray(model32(ids, pixel_values=pixels, attention_mask=mask))
    b = np.asarray(model16(ids, pixel_values=pixels, attention_mask=mask)).astype(np.float32)
    valid = mask.astype(bool)
    rel = np.linalg.norm((a - b)[valid]) / np.linalg.norm(a[valid])
    assert rel < 2e-2, rel  # transformers' own bfloat16 model is 1.6e-2 off its float32 logits here


def test_tied_embeddings_accept_an_identical_head_on_disk_and_reject_a_different_one(tmp_path):
    directory = hf_tiny.save_llava(str(tmp_path / "tied"), hf_tiny.llava_config(tie=True), seed=2)
    model, _ = sgm_jax.load_model(directory)
    assert model.lm_head is None
    embed = np.asarray(model.model.language_model.embed_tokens.embedding[...])
    for name, head in [("same", embed), ("different", embed + 1.0)]:
        out = hf_tiny.rewrite_keys(directory, str(tmp_path / name), lambda k: k)
        tensors = load_file(os.path.join(out, "model.safetensors"))
        tensors["language_model.lm_head.weight"] = torch.tensor(head)
        save_file(tensors, os.path.join(out, "model.safetensors"))
        if name == "same":
            _assert_same_params(sgm_jax.load_model(out)[0], model)
        else:
            with pytest.raises(CheckpointError, match="language_model.lm_head.weight differs"):
                sgm_jax.load_model(out)


def test_tied_checkpoint_storing_only_the_head_loads(tmp_path):
    """`safetensors.torch.save_model` keeps one name of a tied pair; for a tied Llama it is `lm_head.weight`."""
    from safetensors.torch import save_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=120,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(3)
    hf = LlamaForCausalLM(config)
    hf_tiny.randomize(hf, 3)
    hf.tie_weights()
    directory = tmp_path / "head_only"
    hf.save_pretrained(directory)
    os.remove(directory / "model.safetensors")
    save_model(hf, str(directory / "model.safetensors"))
    assert "lm_head.weight" in load_file(directory / "model.safetensors")
    assert "model.embed_tokens.weight" not in load_file(directory / "model.safetensors")

    model, _ = sgm_jax.load_model(str(directory))
    ids = np.random.default_rng(0).integers(0, 120, (2, 9))
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=2e-5, rtol=1e-5)


def test_hub_id_loads_from_the_local_cache_offline(saved, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--tiny-org--tiny-llava"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(saved, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _assert_same_params(sgm_jax.load_model("tiny-org/tiny-llava")[0], sgm_jax.load_model(saved)[0])
    with pytest.raises(FileNotFoundError, match="never downloads"):
        sgm_jax.load_model("tiny-org/not-cached")


def test_processor_comes_from_the_directory_and_fills_the_image_tokens(saved, tmp_path):
    """A real LlavaProcessor: its `<image>` expansion matches the model, and the logits match transformers."""
    directory = str(tmp_path / "with_processor")
    shutil.copytree(saved, directory)
    hf_tiny.save_processor(directory)
    model, processor = sgm_jax.load_model(directory)
    assert type(processor).__name__ == "LlavaProcessor"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    batch = processor(images=[image], text=["<image> describe the picture"], return_tensors="np")
    assert int((batch["input_ids"] == model.image_token_id).sum()) == model.spec.features_per_image
    ours = np.asarray(
        model(batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])
    )
    hf = hf_tiny.load_reference(directory)
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-4
