"""A text Llama's RoPE config as sgm_jax reads it: the default, the old top-level `rope_theta` field and Llama-3's
frequency scaling, each read back by `to_hf`. Its parity with transformers on each (a prompt of several hundred
tokens included) is the `llama` row of test_families.py."""

import pytest

import hf_tiny
import sgm_jax


@pytest.mark.parametrize(
    "legacy_rope_theta, rope",
    [(None, None), (500000.0, None), (None, hf_tiny.LLAMA3)],
    ids=["default", "legacy", "llama3"],
)
def test_rope_fields_are_read_and_written_back(tmp_path, legacy_rope_theta, rope):
    directory = hf_tiny.save_llama(str(tmp_path), seed=3, legacy_rope_theta=legacy_rope_theta, rope_parameters=rope)
    model, processor = sgm_jax.load_model(directory)
    assert processor is None
    assert model.spec.rope_theta == (legacy_rope_theta or (rope or {}).get("rope_theta", 10000.0))
    assert bool(model.spec.rope_llama3) == (rope is not None)
    written = model.spec.to_hf()["rope_parameters"]
    assert written == (rope or {"rope_type": "default", "rope_theta": legacy_rope_theta or 10000.0})
