"""LLaVA logits and every intermediate against transformers (fp32, eager attention) on tiny random checkpoints."""

import numpy as np
import pytest
import torch
from flax import nnx

import hf_tiny

TOL = 1e-4

CASES = {
    "mha-layer-2-default": dict(kv_heads=4, feature_layer=-2, strategy="default"),
    "gqa-layer-1-full-biases-tied": dict(
        kv_heads=2, feature_layer=-1, strategy="full", attention_bias=True, mlp_bias=True, tie=True
    ),
    "mqa-layer-list-default-no-projector-bias": dict(
        kv_heads=1, feature_layer=[-3, -1], strategy="default", projector_bias=False
    ),
    "gqa-layer-list-full": dict(kv_heads=2, feature_layer=[0, -2], strategy="full"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    return hf_tiny.llava_and_reference(
        tmp_path_factory.mktemp(request.param), seed=len(request.param), **CASES[request.param]
    )


_forward = nnx.jit(lambda model, ids, pixels, mask: model.forward(ids, pixel_values=pixels, attention_mask=mask))


def _reference(hf, ids, mask, pixels):
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids),
            pixel_values=torch.tensor(pixels),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(hf_tiny.generate_positions(mask)),
            output_hidden_states=True,
        )
        vision = hf.model.vision_tower(torch.tensor(pixels), output_hidden_states=True).hidden_states
    return out, vision


def _assert_close(ours, theirs, valid, what):
    ours, theirs = np.asarray(ours), theirs.numpy()
    assert ours.shape == theirs.shape, what
    err = np.abs(ours - theirs)[valid].max()
    assert err <= TOL, f"{what}: max abs error {err:.2e}"


def test_logits_and_intermediates_match_transformers(case):
    model, hf = case
    spec = model.spec
    ids, mask, pixels = hf_tiny.multimodal_batch(
        1, pads=[0, 3, 7], length=spec.features_per_image + 12, features_per_image=spec.features_per_image
    )
    ours = _forward(model, ids, pixels, mask)
    ref, ref_vision = _reference(hf, ids, mask, pixels)
    valid = mask.astype(bool)

    assert len(ours["vision_hidden_states"]) == len(ref_vision) == spec.vision.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(ours["vision_hidden_states"], ref_vision)):
        _assert_close(a, b, np.ones(a.shape[:2], bool), f"vision hidden state {i}")
    features, _ = model.model.image_features(pixels)
    ref_features = torch.stack(list(ref.image_outputs.pooler_output))  # one [features, hidden] per image
    _assert_close(features, ref_features, np.ones(features.shape[:2], bool), "projected image features")

    stream = ours["text_stream"]
    assert len(ref.hidden_states) == len(stream) == spec.text.num_hidden_layers + 1
    for i in range(spec.text.num_hidden_layers):
        _assert_close(stream[i], ref.hidden_states[i], valid, f"decoder hidden state {i}")
    _assert_close(ours["text_final"], ref.hidden_states[-1], valid, "final normed hidden state")
    _assert_close(ours["logits"], ref.logits, valid, "logits")
    # The public call (checked, cached jit) gives the same logits.
    np.testing.assert_array_equal(
        np.asarray(model(ids, pixel_values=pixels, attention_mask=mask)), np.asarray(ours["logits"])
    )


def test_row_result_does_not_depend_on_padding(case):
    model, _ = case
    n = model.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(2, pads=[0, 5], length=n + 10, features_per_image=n)
    padded = np.asarray(model(ids, pixel_values=pixels, attention_mask=mask))
    alone = np.asarray(model(ids[1:, 5:], pixel_values=pixels[1:], attention_mask=mask[1:, 5:]))
    np.testing.assert_allclose(padded[1, 5:], alone[0], atol=1e-5)


def test_long_prompt_matches_transformers(tmp_path):
    """Several hundred tokens: RoPE at large positions and long softmaxes stay exact."""
    model, hf = hf_tiny.llava_and_reference(tmp_path, seed=7, kv_heads=2)
    n = model.spec.features_per_image
    ids, mask, pixels = hf_tiny.multimodal_batch(3, pads=[0, 40], length=480, features_per_image=n)
    ids[:, -100 : -100 + n] = ids[:, 2 : 2 + n]  # the image tokens sit late in the prompt
    ids[:, 2 : 2 + n] = 5
    ids[1, 42 : 42 + n] = 5
    ids[1, -100 : -100 + n] = hf_tiny.IMAGE_TOKEN
    ours = model(ids, pixel_values=pixels, attention_mask=mask)
    ref, _ = _reference(hf, ids, mask, pixels)
    _assert_close(ours, ref.logits, mask.astype(bool), "logits over 480 tokens")
