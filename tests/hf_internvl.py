"""Tiny random InternVL checkpoints and processors built in process (the `internvl` row of families.py)."""

from __future__ import annotations

import torch
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
)

import hf_tiny
from sgm_jax.models.internvl import InternVLForConditionalGeneration as Ours

# The tokens InternVL's processor reads from its tokenizer, after `tiny_tokenizer`'s `<image>` (id 90).
EXTRA_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
IMAGE_TOKEN = 93  # <IMG_CONTEXT>
# 28 px tiles of 7 px patches: a 4x4 grid, pixel-shuffled to 2x2 = 4 image tokens per tile.
TOKENS_PER_TILE = 4


def internvl_config(
    *, text="qwen2", qk_norm=False, norm_type="layer_norm", mean_pooling=True, tie=None, feature_layer=-1
) -> InternVLConfig:
    vision = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        attention_bias=True,
        use_qk_norm=qk_norm,
        norm_type=norm_type,
        use_mean_pooling=mean_pooling,
    )
    text_config = dict(
        model_type=text,
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
    )
    top = {} if tie is None else {"tie_word_embeddings": tie}
    return InternVLConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_id=IMAGE_TOKEN,
        image_seq_length=TOKENS_PER_TILE,
        vision_feature_layer=feature_layer,
        **top,
    )


def internvl_tokenizer() -> PreTrainedTokenizerFast:
    base = hf_tiny.tiny_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        extra_special_tokens=EXTRA_TOKENS,
    )
    assert tokenizer.context_image_token_id == IMAGE_TOKEN, tokenizer.context_image_token_id
    return tokenizer


def internvl_processor():
    """InternVL's processor (without a video processor: no torchvision) over 28 px tiles, as sgm_jax loads it."""
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.25] * 3, max_patches=4
    )
    return Ours.processor_class()(
        image_processor=image_processor,
        tokenizer=internvl_tokenizer(),
        image_seq_length=TOKENS_PER_TILE,
        chat_template=hf_tiny.CHAT_TEMPLATE.replace("<image>", "<IMG_CONTEXT>"),
    )


def save_internvl(directory: str, config: InternVLConfig | None = None, seed: int = 0) -> str:
    """A randomised InternVL (layer scales, cls token and positions included) with its processor."""
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config or internvl_config())
    hf_tiny.randomize(model, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(directory)
    internvl_processor().save_pretrained(directory)
    return directory
