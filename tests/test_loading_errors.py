"""Broken checkpoints and bad files fail loudly, naming what is wrong (each family's unsupported configs and bad
inputs are in test_families.py)."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_tiny
import sgm_jax
from sgm_jax.runtime.errors import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return hf_tiny.save_tiny(tmp_path_factory.mktemp("saved"), seed=5)


def _edit_tensors(saved, out, edit):
    out = hf_tiny.rewrite_keys(saved, str(out), lambda k: k)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(out, "model.safetensors"))
    return out


def _edit_config(saved, out, edit):
    out = hf_tiny.rewrite_keys(saved, str(out), lambda k: k)
    path = os.path.join(out, "config.json")
    config = json.load(open(path))
    edit(config)
    json.dump(config, open(path, "w"))
    return out


def test_missing_tensor_is_named(saved, tmp_path):
    out = _edit_tensors(saved, tmp_path, lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing tensors: \['model.language_model.layers.1.mlp.up_proj.weight'\]"
    ):
        sgm_jax.load_model(out)


def test_wrong_shape_is_named_with_both_shapes(saved, tmp_path):
    def edit(t):
        t["vision_tower.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(47, 32)

    out = _edit_tensors(saved, tmp_path, edit)
    with pytest.raises(
        CheckpointError,
        match=r"vision_tower.encoder.layers.0.mlp.fc1.weight: checkpoint \[47, 32\], "
        r"config implies \[48, 32\]",
    ):
        sgm_jax.load_model(out)


def test_unknown_tensor_is_named(saved, tmp_path):
    def edit(t):
        t["multi_modal_projector.linear_3.weight"] = torch.zeros(2, 2)

    out = _edit_tensors(saved, tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: \['multi_modal_projector.linear_3.weight'\]"):
        sgm_jax.load_model(out)


def test_all_problems_are_reported_together(saved, tmp_path):
    def edit(t):
        t.pop("language_model.model.norm.weight")
        t["extra.weight"] = torch.zeros(1)

    out = _edit_tensors(saved, tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"missing tensors: .*norm.weight.*unexpected tensors: .*extra.weight"):
        sgm_jax.load_model(out)


def test_pickle_checkpoints_are_refused_with_a_reason(saved, tmp_path):
    out = tmp_path / "pickled"
    out.mkdir()
    (out / "config.json").write_text(open(os.path.join(saved, "config.json")).read())
    (out / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.*only safetensors, never pickle"):
        sgm_jax.load_model(str(out))


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory"):
        sgm_jax.load_model(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        sgm_jax.load_model(str(tmp_path))


def test_unknown_dtype_is_refused(saved):
    with pytest.raises(ValueError, match="dtype='float8'"):
        sgm_jax.load_model(saved, dtype="float8")


def test_fields_transformers_does_not_define_are_accepted(tmp_path):
    """Legacy hub fields (SmolLM2's `is_llama_config`, `rope_interleaved`) are inert to the reference, so they load;
    the logits still equal transformers' on the same directory."""
    directory = hf_tiny.save_llama(str(tmp_path))
    path = os.path.join(directory, "config.json")
    config = json.load(open(path))
    config.update(is_llama_config=True, rope_interleaved=False)
    json.dump(config, open(path, "w"))
    model, _ = sgm_jax.load_model(directory)
    hf = hf_tiny.load_reference(directory, hf_tiny.LlamaForCausalLM)
    ids = np.arange(1, 9)[None]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(model(ids)) - ref).max() <= 1e-4
