"""Tiny random Qwen2-VL and Qwen2.5-VL checkpoints and processors built in process, and their transformers references.

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
from safetensors.torch import save_file
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

from hf_tiny import chat_rows, load_reference, randomize

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


def qwen_config(version: str, *, kv_heads=2, tie=False, text_layers=2, vision_depth=None):
    """The tiny config of families.md §7: head_dim 16, M-RoPE sections [2, 3, 3], special ids inside the vocab."""
    text = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        bos_token_id=ENDOFTEXT,
        eos_token_id=IM_END,
        pad_token_id=ENDOFTEXT,
    )
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


def save_qwen(directory: str, config, seed: int = 0, *, layout="save_pretrained", max_shard_size=None) -> str:
    """A randomized model of `config` written into `directory` in one of two key layouts.

    "save_pretrained": transformers 5.24's `save_pretrained` writes the hub layout, `model.embed_tokens.*`,
    `model.layers.N.*`, `model.norm.*`, `visual.*` and `lm_head.weight` (left out when tied), in shards with an
    index when `max_shard_size` (e.g. "20KB") is below the model's size. "state_dict": the names in memory,
    `model.language_model.*`, `model.visual.*` and `lm_head.weight` (left out when tied), in one model.safetensors
    beside config.json (which then has no `architectures` or `dtype`).
    """
    torch.manual_seed(seed)
    model = MODELS["2" if isinstance(config, Qwen2VLConfig) else "2.5"](config)
    randomize(model, seed)
    # `randomize` keys norm weights on "norm" in the name; the merger's `ln_q` would get 0.1·N(0,1) and shrink
    # every image feature, so give it a norm's unit scale.
    ln_q = model.model.visual.merger.ln_q.weight
    with torch.no_grad():
        ln_q.copy_(1.0 + 0.2 * torch.randn(ln_q.shape, generator=torch.Generator().manual_seed(seed + 1)))
    if layout == "save_pretrained":
        model.save_pretrained(directory, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    elif layout == "state_dict":
        os.makedirs(directory, exist_ok=True)
        tensors = {
            k: v.contiguous()
            for k, v in model.state_dict().items()
            if not (config.tie_word_embeddings and k == "lm_head.weight")
        }
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(directory)
    else:
        raise ValueError(f"unknown layout {layout!r}: expected 'save_pretrained' or 'state_dict'")
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


def load_qwen_processor(directory: str, version: str):
    """The processor `save_qwen_processor` wrote, read back without torchvision."""
    return qwen_processor_class(version).from_pretrained(directory)


def qwen_batch(processor, rows, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Left-padded chat prompts, each row `(text, [(h, w), ...])` with random RGB images of those sizes first.

    The processor's own output as numpy: `input_ids`, `attention_mask` and `mm_token_type_ids` `[B, L]`, and when
    any row has an image, `pixel_values` `[N, 3*2*2*2]` (all images' patches, in row order) and `image_grid_thw`
    `[images, 3]`.
    """
    texts, images = chat_rows(processor, rows, seed)
    out = processor(
        text=texts,
        images=images if any(images) else None,
        padding=True,
        padding_side="left",
        return_tensors="np",
    )
    return {k: np.asarray(v) for k, v in out.items()}


def load_qwen_reference(directory: str, version: str):
    """transformers' model of `directory` in fp32 with eager attention, in eval mode."""
    return load_reference(directory, MODELS[version])


def qwen_reference_activations(hf, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' intermediates for a `qwen_batch`, with the M-RoPE positions HF's plain forward builds itself.

    Keys: each `model.visual.blocks.N` output and `model.visual.merger` (+ `.mlp.0`) output as the hooks see them;
    for Qwen2.5 these are in window-permuted order (merged units reordered by `window_index`, 4 patch rows per
    unit; the merger's output is un-permuted only after the hook), so `window_index` is given too. `image_features`
    are the merged features in `<|image_pad|>` order; `positions` `[3, B, L]` are what reached the rotary embedding
    (`get_rope_index`: mask-aware, pads at 0; a batch with no image gets `arange(L)` instead), `rope_deltas` `[B, 1]`.
    `hidden_states` `[layers + 1, B, L, H]`: the input embeddings, each layer's output but the last, and the final
    normed state; then `logits`. Vision keys are absent for a batch without images.
    """
    modules = dict(hf.named_modules())
    names = [f"model.visual.blocks.{i}" for i in range(len(hf.model.visual.blocks))]
    names += ["model.visual.merger", "model.visual.merger.mlp.0"]
    out: dict[str, np.ndarray] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, args, y, name=name: out.__setitem__(name, y.numpy()))
        for name in names
    ]
    handles.append(
        modules["model.language_model.rotary_emb"].register_forward_pre_hook(
            lambda m, args: out.__setitem__("positions", args[1].numpy())
        )
    )
    hf.model.rope_deltas = None  # HF keeps the last forward's deltas on the model; report this one's only
    try:
        with torch.no_grad():
            ref = hf(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    if ref.image_outputs is not None:
        out["image_features"] = torch.cat(ref.image_outputs.pooler_output).numpy()
    if hf.model.rope_deltas is not None:
        out["rope_deltas"] = hf.model.rope_deltas.numpy()
    if isinstance(hf, Qwen2_5_VLForConditionalGeneration) and "image_grid_thw" in batch:
        from transformers.vision_utils import get_vision_window_index

        vision = hf.config.vision_config
        out["window_index"] = get_vision_window_index(
            torch.tensor(batch["image_grid_thw"]), vision.spatial_merge_size, vision.window_size, vision.patch_size
        )[0].numpy()
    out["hidden_states"] = np.stack([h.numpy() for h in ref.hidden_states])
    out["logits"] = ref.logits.numpy()
    return out
