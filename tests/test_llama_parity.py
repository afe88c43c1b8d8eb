"""A text-only Llama causal LM runs through the same decoder, exact to transformers."""

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import hf_tiny
import sgm_jax


@pytest.mark.parametrize(
    "legacy_rope_theta, rope",
    [(None, None), (500000.0, None), (None, hf_tiny.LLAMA3)],
    ids=["default", "legacy", "llama3"],
)
def test_text_llama_matches_transformers(tmp_path, legacy_rope_theta, rope):
    directory = hf_tiny.save_llama(str(tmp_path), seed=3, legacy_rope_theta=legacy_rope_theta, rope_parameters=rope)
    model, processor = sgm_jax.load_model(directory)
    assert processor is None
    assert model.spec.rope_theta == (legacy_rope_theta or (rope or {}).get("rope_theta", 10000.0))
    assert bool(model.spec.rope_llama3) == (rope is not None)
    assert model.spec.to_hf()["rope_parameters"] == (rope or model.spec.to_hf()["rope_parameters"])
    hf = hf_tiny.load_reference(directory, LlamaForCausalLM)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 120, (2, 300))
    mask = np.ones_like(ids)
    mask[1, :17] = 0
    ours = model.forward(ids, attention_mask=mask)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(hf_tiny.generate_positions(mask)),
            output_hidden_states=True,
        )
    valid = mask.astype(bool)
    for i in range(model.spec.num_hidden_layers):
        err = np.abs(np.asarray(ours["text_stream"][i]) - ref.hidden_states[i].numpy())[valid].max()
        assert err <= 1e-4, f"hidden state {i}: {err:.2e}"
    err = np.abs(np.asarray(model(ids, attention_mask=mask)) - ref.logits.numpy())[valid].max()
    assert err <= 1e-4, f"logits: {err:.2e}"
