"""Tiny random Qwen2-VL and Qwen2.5-VL checkpoints and processors built in process, and transformers' M-RoPE positions.

Images only: transformers 5.24 constructs and loads a stock `Qwen2VLProcessor`/`Qwen2_5_VLProcessor` only with its
video processor, which needs torchvision; `qwen_processor_class` gives the same processor without that slot.
"""

from __future__ import annotations

import functools
import json
import os
import string

import numpy as np
import torch
from transformers import (
    AutoConfig,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from hf_tiny import randomize

# Qwen's special tokens sit above the ordinary BPE tokens as on the hub (ids 0-189 here), in a vocab of 200.
VOCAB = 200
SPECIAL_TOKENS = {
    "<|image_pad|>": 190,
    "<|video_pad|>": 191,
    "<|vision_start|>": 192,
    "<|vision_end|>": 193,
    "<|endoftext|>": 194,
    "<|im_start|>": 195,
    "<|im_end|>": 196,
    "<|vision_pad|>": 197,
}
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END, ENDOFTEXT, IM_START, IM_END, VISION_PAD = SPECIAL_TOKENS.values()

# Image sizes (h, w) in pixels that the processor keeps as they are (multiples of patch 2 x merge 2 = 4, area within
# min/max pixels), with their `image_grid_thw` in patches. Qwen2.5's window_size 8 px is 2x2 merged units (4x4
# patches): a merged height that is a multiple of 2 adds one empty window row, which HF drops.
GRID_12x8 = (24, 16)  # (1, 12, 8): 6x4 merged units, 24 tokens, 3x2 full windows + an empty row
GRID_4x4 = (8, 8)  # (1, 4, 4): 2x2 units, 4 tokens, one window + an empty row
GRID_6x10 = (12, 20)  # (1, 6, 10): 3x5 units, 15 tokens, partial windows at the bottom and right edges

MODELS = {"2": Qwen2VLForConditionalGeneration, "2.5": Qwen2_5_VLForConditionalGeneration}

# Qwen's turn format without its default system turn, image and video placeholders before the text as Qwen puts them.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_text_config(*, kv_heads=2, text_layers=2) -> dict:
    """The tiny Qwen2 decoder's config fields (plain Qwen2's too): head_dim 16, special ids inside the vocab."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        bos_token_id=ENDOFTEXT,
        eos_token_id=IM_END,
        pad_token_id=ENDOFTEXT,
    )


def qwen_config(version: str, *, kv_heads=2, tie=False, text_layers=2, vision_depth=None):
    """The tiny config of families.md §7: `qwen_text_config` with M-RoPE sections [2, 3, 3]."""
    text = qwen_text_config(kv_heads=kv_heads, text_layers=text_layers)
    text["rope_parameters"]["mrope_section"] = [2, 3, 3]
    patches = dict(patch_size=2, temporal_patch_size=2, spatial_merge_size=2)
    ids = dict(
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=tie,
    )
    if version == "2":
        vision = dict(depth=vision_depth or 2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, **patches)
        return Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
    if version == "2.5":
        depth = vision_depth or 4
        vision = dict(
            depth=depth,
            hidden_size=32,
            intermediate_size=48,
            num_heads=4,
            out_hidden_size=64,
            window_size=8,
            fullatt_block_indexes=[i for i in (1, 3) if i < depth],
            **patches,
        )
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
    raise ValueError(f"unknown Qwen-VL version {version!r}: expected '2' or '2.5'")


def save_qwen(directory: str, config, seed: int = 0) -> str:
    """A randomized model of `config` written by transformers' `save_pretrained` into `directory`: the hub layout,
    `model.embed_tokens.*`, `model.layers.N.*`, `model.norm.*`, `visual.*` and `lm_head.weight` (left out when
    tied)."""
    torch.manual_seed(seed)
    model = MODELS["2" if isinstance(config, Qwen2VLConfig) else "2.5"](config)
    randomize(model, seed)
    # `randomize` keys norm weights on "norm" in the name; the merger's `ln_q` would get 0.1·N(0,1) and shrink
    # every image feature, so give it a norm's unit scale.
    ln_q = model.model.visual.merger.ln_q.weight
    with torch.no_grad():
        ln_q.copy_(1.0 + 0.2 * torch.randn(ln_q.shape, generator=torch.Generator().manual_seed(seed + 1)))
    model.save_pretrained(directory)
    return directory


def flatten_config(directory: str) -> str:
    """Rewrite config.json in the flat form of the hub's Qwen2-VL and Qwen2.5-VL configs (Qwen/Qwen2-VL-7B-Instruct).

    Text fields sit at the top level with `rope_theta`, `rope_scaling: {type: mrope, mrope_section}`, the inert
    `sliding_window: 32768` and `torch_dtype`; the legacy `vision_token_id` is added; `vision_config` has no
    `model_type` or `rope_parameters` and carries the legacy `in_chans` and `spatial_patch_size`. transformers must
    read it back to the same text config, apart from the stale `type: mrope` it keeps in `rope_parameters`.
    """
    before = AutoConfig.from_pretrained(directory).text_config.to_dict()
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    text = config.pop("text_config")
    for key in ("model_type", "layer_types"):
        text.pop(key)
    rope = text.pop("rope_parameters")
    text.update(
        rope_theta=rope["rope_theta"],
        rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]},
        sliding_window=32768,
        torch_dtype=config.pop("dtype", "float32"),  # the weights are fp32 in both layouts
    )
    vision = config["vision_config"]
    for key in ("model_type", "rope_parameters"):
        vision.pop(key)
    vision.update(in_chans=vision["in_channels"], spatial_patch_size=vision["patch_size"])
    with open(path, "w") as f:
        json.dump({**config, **text, "vision_token_id": VISION_PAD}, f, indent=2)
    after = AutoConfig.from_pretrained(directory).text_config.to_dict()
    assert after["rope_parameters"].pop("type") == "mrope"
    # A flat config also hands its `torch_dtype` to the text config, where the nested one leaves `dtype` unset.
    before.pop("dtype")
    after.pop("dtype")
    diff = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not diff, diff
    return directory


@functools.cache
def qwen_processor_class(version: str):
    """The version's stock processor with no video processor, under the stock class name.

    `ProcessorMixin` takes its sub-processors from the `__init__` signature; without `video_processor` there it
    neither checks one against a torchvision class nor loads one, and `save_pretrained` writes the stock
    `processor_class`, so the files read like a hub checkpoint's.
    """
    stock = Qwen2VLProcessor if version == "2" else Qwen2_5_VLProcessor

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        stock.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return type(stock.__name__, (stock,), {"__init__": __init__})


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE tokenizer with Qwen's special tokens at the hub's places above the ordinary ones (`SPECIAL_TOKENS`),
    `<|im_end|>` its EOS and `<|endoftext|>` its pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [
        "a red square above a blue circle",
        "describe the picture please",
        "what is in this image",
        "three green triangles on the left",
        "that is a bad word and a nice word",
        "the small yellow dog jumps over four brown boxes",
        "count every shape and name its colour",
        "system user assistant",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=IMAGE_TOKEN,
        special_tokens=["<unk>"],
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 20, trainer)
    # The special tokens are appended after the trained ones: the BPE has to fill exactly the ids below them.
    assert tok.get_vocab_size() == IMAGE_TOKEN, tok.get_vocab_size()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    assert ids == SPECIAL_TOKENS, ids
    return tokenizer


def save_qwen_processor(directory: str, version: str):
    """`qwen_tokenizer`, a PIL Qwen2-VL image processor and a Qwen chat template.

    Saved beside the model, with config.json's special ids (nested or flat) pointed at the tokenizer's and a
    generation_config.json that stops at `<|im_end|>`. Returns the processor.
    """
    tokenizer = qwen_tokenizer()
    ids = SPECIAL_TOKENS
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=2, temporal_patch_size=2, merge_size=2, min_pixels=16, max_pixels=1024
    )
    processor = qwen_processor_class(version)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(directory)
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config.get("text_config", config).update(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    ).save_pretrained(directory)
    return processor


def qwen_positions(hf, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The M-RoPE positions `[3, B, L]` that reach transformers' rotary embedding in a plain forward of `batch`
    (`get_rope_index`: mask-aware, pads at 0), and each row's delta `[B]`."""
    seen = {}
    handle = hf.model.language_model.rotary_emb.register_forward_pre_hook(
        lambda m, args: seen.__setitem__("positions", args[1].numpy())
    )
    hf.model.rope_deltas = None  # transformers keeps the last forward's deltas on the model; report this one's only
    try:
        with torch.no_grad():
            hf(**{k: torch.tensor(v) for k, v in batch.items()})
    finally:
        handle.remove()
    return seen["positions"], hf.model.rope_deltas.numpy()[:, 0]
