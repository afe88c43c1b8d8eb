"""The mid-size shapes the benchmarks share (LLaVA and Qwen2.5-VL, ~30M parameters each), and inputs for them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

IMAGE_TOKEN = 7999
# Qwen2.5-VL's vision markers, beside its image token at the top of the vocabulary.
VISION_START, VISION_END, VIDEO_TOKEN = 7996, 7997, 7998
QWEN_IMAGE_PX, QWEN_PATCH = 224, 14


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


# LLaVA-NeXT's tiles at the mid-size LLaVA's 112 px: grids of 1 x 2, 2 x 1 and 2 x 2 tiles (5 tiles at most).
NEXT_PINPOINTS = [[112, 224], [224, 112], [224, 224]]


def mid_size_next_config() -> LlavaNextConfig:
    """The mid-size LLaVA's towers and LM as LLaVA-NeXT, tiling 112 px tiles up to 224 x 224."""
    llava = mid_size_config()
    return LlavaNextConfig(
        vision_config=llava.vision_config,
        text_config=llava.text_config,
        image_token_index=IMAGE_TOKEN,
        image_grid_pinpoints=NEXT_PINPOINTS,
    )


def make_next_inputs(batch: int, length: int, seed: int = 0, min_length: int | None = None) -> dict[str, np.ndarray]:
    """What LLaVA-NeXT's processor gives for left-padded rows with one 224 x 224 image each: the 2 x 2 grid, 5
    tiles, 64 + 16 x (16 + 1) = 336 image tokens after the first token; `pixel_values` `[batch, 5, 3, 112, 112]`
    and `image_sizes`."""
    n_image = 64 + 16 * 17
    if min(length, min_length or length) < n_image + 2:
        raise SystemExit(
            f"--length and --min-length must be at least {n_image + 2} for the LLaVA-NeXT shape (one image is "
            f"{n_image} tokens)"
        )
    rng = np.random.default_rng(seed)
    ids, mask, _ = make_inputs(batch, length, 0, seed, min_length)
    for row in range(batch):
        pad = length - int(mask[row].sum())
        ids[row, pad + 1 : pad + 1 + n_image] = IMAGE_TOKEN
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": rng.standard_normal((batch, 5, 3, 112, 112)).astype(np.float32),
        "image_sizes": np.tile(np.array([[224, 224]], np.int64), (batch, 1)),
    }


MLLAMA_IMAGE_TOKEN = 8000  # `<|image|>` sits just past the LM head's vocabulary, as in Llama-3.2-Vision


def mid_size_mllama_config() -> MllamaConfig:
    """Vision 256 wide, 4 local + 2 gated global layers over 4 tiles of 112 px (65 positions each, padded to 72),
    intermediate layers 1 and 3; a Llama-3 decoder 512 wide x 6 layers (cross-attention in 1 and 4), 8 query /
    2 key-value heads, MLP 1408, vocab 8000."""
    vision = dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_global_layers=2,
        attention_heads=4,
        intermediate_size=1024,
        intermediate_layers_indices=[1, 3],
        vision_output_dim=768,
        image_size=112,
        patch_size=14,
        max_num_tiles=4,
    )
    text = dict(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        cross_attention_layers=[1, 4],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=MLLAMA_IMAGE_TOKEN)


def make_mllama_inputs(batch: int, length: int, seed: int = 0, min_length: int | None = None) -> dict[str, np.ndarray]:
    """What Llama-3.2-Vision's processor gives for left-padded rows with one image each in the 2 x 2 tile grid:
    `<|image|>` after the first token, `pixel_values` `[batch, 1, 4, 3, 112, 112]`, `aspect_ratio_ids`,
    `aspect_ratio_mask` and the `cross_attention_mask` from the image token on."""
    rng = np.random.default_rng(seed)
    ids, mask, _ = make_inputs(batch, length, 0, seed, min_length)
    cross = np.zeros((batch, length, 1, 4), np.int64)
    for row in range(batch):
        pad = length - int(mask[row].sum())
        ids[row, pad + 1] = MLLAMA_IMAGE_TOKEN
        cross[row, pad + 1 :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": rng.standard_normal((batch, 1, 4, 3, 112, 112)).astype(np.float32),
        "aspect_ratio_ids": np.full((batch, 1), 6, np.int64),  # (2, 2) in the default list
        "aspect_ratio_mask": np.ones((batch, 1, 4), np.int64),
        "cross_attention_mask": cross,
    }


def mid_size_qwen_config() -> Qwen2_5_VLConfig:
    """Vision 256 wide x 4 blocks (full attention in 1 and 3, 8 x 8-patch windows elsewhere), merger to 512;
    Qwen2 512 wide x 6 layers, 8 query / 2 key-value heads of 64, M-RoPE sections [8, 12, 12], MLP 1408."""
    vision = dict(
        depth=4,
        hidden_size=256,
        intermediate_size=704,
        num_heads=4,
        out_hidden_size=512,
        patch_size=QWEN_PATCH,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=112,
        fullatt_block_indexes=[1, 3],
    )
    text = dict(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        eos_token_id=0,
        pad_token_id=0,
    )
    return Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )


def make_qwen_inputs(batch: int, length: int, seed: int = 0, min_length: int | None = None) -> dict[str, np.ndarray]:
    """What Qwen2.5-VL's processor gives for left-padded rows with one 224 x 224 image each (a 16 x 16 patch grid,
    64 image tokens between the vision markers after the first token): `input_ids`, `attention_mask`,
    `mm_token_type_ids` (1 at image tokens; without it transformers falls back to text positions), `pixel_values`
    `[batch * 256, 1176]` and `image_grid_thw`. With `min_length`, row lengths vary in [min_length, length]."""
    rng = np.random.default_rng(seed)
    grid = QWEN_IMAGE_PX // QWEN_PATCH
    n_image = grid * grid // 4
    ids = rng.integers(1, VISION_START, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(batch):
        pad = 0 if min_length is None else length - int(rng.integers(min_length, length + 1))
        mask[row, :pad] = 0
        ids[row, :pad] = 0
        ids[row, pad + 1] = VISION_START
        ids[row, pad + 2 : pad + 2 + n_image] = IMAGE_TOKEN
        ids[row, pad + 2 + n_image] = VISION_END
    patch_width = 3 * 2 * QWEN_PATCH * QWEN_PATCH
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == IMAGE_TOKEN).astype(np.int64),
        "pixel_values": rng.standard_normal((batch * grid * grid, patch_width)).astype(np.float32),
        "image_grid_thw": np.tile(np.array([[1, grid, grid]], np.int64), (batch, 1)),
    }


def make_llava_inputs(batch: int, length: int, seed: int = 0, min_length: int | None = None) -> dict[str, np.ndarray]:
    """`make_inputs` for the mid-size LLaVA (64 image tokens per row) by the processor's names."""
    ids, mask, pixels = make_inputs(batch, length, 64, seed, min_length)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


@dataclasses.dataclass(frozen=True)
class Shape:
    """A benchmark shape: its transformers class and config, processor-like inputs for it, tokens per row."""

    description: str
    model_class: type[PreTrainedModel]
    config: Callable[[], PretrainedConfig]
    inputs: Callable[..., dict[str, np.ndarray]]
    length: int = 256


SHAPES = {
    "llava": Shape(
        "mid-size LLaVA (64 image tokens per row)", LlavaForConditionalGeneration, mid_size_config, make_llava_inputs
    ),
    "llava-next": Shape(
        "mid-size LLaVA-NeXT (one 224 px image in 5 tiles of 112 px, 336 image tokens per row)",
        LlavaNextForConditionalGeneration,
        mid_size_next_config,
        make_next_inputs,
        length=512,
    ),
    "mllama": Shape(
        "mid-size Llama-3.2-Vision (one image of 4 tiles of 112 px per row, 2 cross-attention layers)",
        MllamaForConditionalGeneration,
        mid_size_mllama_config,
        make_mllama_inputs,
    ),
    "qwen2.5-vl": Shape(
        "mid-size Qwen2.5-VL (one 224 px image, 256 patches, 64 image tokens per row)",
        Qwen2_5_VLForConditionalGeneration,
        mid_size_qwen_config,
        make_qwen_inputs,
    ),
}
