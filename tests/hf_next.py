"""Tiny random LLaVA-NeXT checkpoints and processors built in process (the `llava-next` row of families.py)."""

from __future__ import annotations

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

import hf_tiny

# Tiles of 28 px with 7 px patches: 16 features per tile; grids of 1x2, 2x1 and 2x2 tiles (5 tiles at most).
PINPOINTS = [[28, 56], [56, 28], [56, 56]]
# Original sizes (height, width) covering both unpad branches (wide, tall) and a square.
SIZES = {"wide": (30, 50), "tall": (61, 20), "square": (40, 40)}


def next_config(*, tie=False, kv_heads=4, feature_layer=-2, text_layers=2) -> LlavaNextConfig:
    """LLaVA-1.5's tiny CLIP tower and Llama (`hf_tiny.llava_config`) with tiles of `PINPOINTS`."""
    base = hf_tiny.llava_config(kv_heads=kv_heads, text_layers=text_layers)
    return LlavaNextConfig(
        vision_config=base.vision_config,
        text_config=base.text_config,
        image_token_index=hf_tiny.tiny_tokenizer().convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=feature_layer,
        tie_word_embeddings=tie,
    )


def save_next(directory: str, config: LlavaNextConfig | None = None, seed: int = 0, **save_kwargs) -> str:
    """A randomised LLaVA-NeXT (`image_newline` included) with its processor, saved into `directory`."""
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config or next_config())
    hf_tiny.randomize(model, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(directory, **save_kwargs)
    next_processor().save_pretrained(directory)
    return directory


def next_processor() -> LlavaNextProcessor:
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 28},
        crop_size={"height": 28, "width": 28},
        image_grid_pinpoints=PINPOINTS,
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=hf_tiny.tiny_tokenizer(),
        patch_size=7,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=hf_tiny.CHAT_TEMPLATE,
    )
