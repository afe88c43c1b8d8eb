"""The mid-size LLaVA shape the benchmarks share (~30M parameters), and inputs for it."""

from __future__ import annotations

import numpy as np
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

IMAGE_TOKEN = 7999


def mid_size_config() -> LlavaConfig:
    """CLIP 256 wide x 4 layers at 112 px / patch 14; Llama 512 wide x 6 layers, 8 heads, MLP 1408, vocab 8000."""
    vision = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=112,
        patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=8000,
        rms_norm_eps=1e-5,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)


def make_inputs(batch: int, length: int, n_image: int, seed: int = 0, min_length: int | None = None):
    """Left-padded rows of random text with one image each (64 image tokens after the first token).

    With `min_length`, row lengths vary uniformly in [min_length, length].
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, IMAGE_TOKEN, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(batch):
        pad = 0 if min_length is None else length - int(rng.integers(min_length, length + 1))
        mask[row, :pad] = 0
        ids[row, :pad] = 0
        ids[row, pad + 1 : pad + 1 + n_image] = IMAGE_TOKEN
    pixels = rng.standard_normal((batch, 3, 112, 112)).astype(np.float32)
    return ids, mask, pixels
