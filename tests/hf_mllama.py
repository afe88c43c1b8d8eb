"""Tiny random Llama-3.2-Vision (Mllama) checkpoints and processors built in process (the `mllama` row of
families.py)."""

from __future__ import annotations

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

import hf_tiny

IMAGE_TOKEN = 91  # `<|image|>`, after `tiny_tokenizer`'s own `<image>` (90)


def mllama_config(*, kv_heads=2, tie=False) -> MllamaConfig:
    """28 px tiles of 14 px patches (5 positions per tile, padded to 8), up to 4 tiles; a 5-layer decoder with
    cross-attention layers 1 and 3."""
    vision = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_global_layers=2,
        attention_heads=4,
        intermediate_size=64,
        intermediate_layers_indices=[1, 3],
        vision_output_dim=96,
        image_size=28,
        patch_size=14,
        max_num_tiles=4,
    )
    text = dict(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        cross_attention_layers=[1, 3],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters=hf_tiny.LLAMA3,
        tie_word_embeddings=tie,
    )
    return MllamaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)


def mllama_processor() -> MllamaProcessor:
    tokenizer = hf_tiny.tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<|image|>", "<|python_tag|>"]})
    assert tokenizer.convert_tokens_to_ids("<|image|>") == IMAGE_TOKEN
    image_processor = MllamaImageProcessorPil(
        size={"height": 28, "width": 28}, max_image_tiles=4, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    return MllamaProcessor(
        image_processor, tokenizer, chat_template=hf_tiny.CHAT_TEMPLATE.replace("<image>", "<|image|>")
    )


def save_mllama(directory: str, config: MllamaConfig | None = None, seed: int = 0) -> str:
    """A randomised Mllama (every gate non-zero: transformers initialises the tanh gates to 0) with its processor."""
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config or mllama_config())
    hf_tiny.randomize(model, seed)
    with torch.no_grad():  # gates away from 0 and from saturation, so that every gated path matters
        gates = [p for name, p in model.named_parameters() if "gate" in name and p.numel() == 1]
        for i, p in enumerate(gates):
            p.copy_(torch.tensor([0.4 + 0.1 * (i % 7)]))
    model.save_pretrained(directory)
    mllama_processor().save_pretrained(directory)
    return directory
