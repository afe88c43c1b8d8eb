"""The families sgm_jax ports, as one table the conformance suite (`test_families.py`) runs every property over.

A `FamilyCase` is what the suite needs to know of a family: how to build a tiny random checkpoint with its processor
(`save`), the processor's batch for mixed rows, transformers' reference model and its activations, the image-domain
sites with their widths, the key layouts its checkpoints come in, the config edits and bad inputs it must refuse by
name, and its config variants. Everything else is the same code for every family; adding a family is one row.

Activations, ours and transformers', come as one dict: `logits` `[B, L, V]` and `hidden_states` (the embeddings,
each decoder layer's output and the final normed state, `[B, L, H]` each) at the positions `generate` gives
left-padded rows; for image families also `vision` (the vision tower's states) and `projector` (the output of the
module that hands image features to the decoder), each family's own layout, ours aligned to transformers'.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flax import nnx
from transformers import (
    InternVLForConditionalGeneration,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    MllamaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import hf_internvl
import hf_mllama
import hf_next
import hf_qwen
import hf_tiny
from sgm_jax.models.batch import model_batch
from sgm_jax.models.llava_next import image_layout
from sgm_jax.models.site import OUT

Rows = tuple[tuple[str, tuple[tuple[int, int], ...]], ...]
"""Chat rows `(prompt, image sizes (h, w))`; a row's images come before its text."""

# One image after left padding, two images of other sizes in one row, and a text-only row (LLaVA-NeXT's three
# aspect ratios: both unpad branches and a square).
MIXED: Rows = (
    ("describe the picture please", ((30, 50),)),
    ("a red square above a blue circle", ((61, 20), (40, 40))),
    ("that is a nice word", ()),
)
# Text families: one prompt of several hundred tokens (RoPE at large positions, long softmaxes) among short ones.
TEXT: Rows = (
    ("describe the picture please", ()),
    ("a red square" + " above a blue circle" * 80, ()),
    ("that is a nice word", ()),
)


def tokenizer_of(processor):
    """The tokenizer of a processor (a text family's processor is its tokenizer)."""
    return getattr(processor, "tokenizer", processor)


def processor_batch(processor, rows: Rows, seed: int = 0, *, nested: bool = False, **kwargs) -> dict[str, np.ndarray]:
    """The processor's own output for chat `rows`, left-padded, as numpy; images random RGB of the rows' sizes,
    handed over as one flat list or (`nested`) one list per row, as the family's processor takes them."""
    texts, per_row = hf_tiny.chat_rows(processor, rows, seed)
    flat = [image for row in per_row for image in row]
    images = {"images": per_row if nested else flat} if flat else {}
    out = processor(text=texts, **images, padding=True, padding_side="left", return_tensors="np", **kwargs)
    return {k: np.asarray(v) for k, v in out.items()}


def site_module(model: nnx.Module, path: str) -> nnx.Module:
    """The module at a dotted site path (`model.visual.merger`, `...layers.1...`)."""
    return functools.reduce(
        lambda node, part: node[int(part)] if part.isdigit() else getattr(node, part), path.split("."), model
    )


@nnx.jit
def _captured_forward(model, input_ids, attention_mask, inputs):
    """`model.forward` with what its sites record (one compiled program: op by op, a forward compiles each op)."""
    return nnx.capture(model.forward, nnx.Intermediate)(input_ids, attention_mask=attention_mask, **inputs)


def our_activations(case: FamilyCase, model, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """sgm_jax's activations for a processor batch, cropped to the batch's own length (the bucket pads on the
    left), in the suite's common dict (see the module docstring)."""
    prepared = model_batch(model, batch)
    projector = site_module(model, case.projector) if case.projector else None
    if projector is not None:
        projector.record = frozenset({OUT})
    try:
        out, sown = _captured_forward(model, prepared.input_ids, prepared.attention_mask, prepared.inputs)
    finally:
        if projector is not None:
            projector.record = frozenset()
    length = batch["input_ids"].shape[1]
    stream = [np.asarray(h)[:, -length:] for h in out.text_stream[:-1]]
    result = {
        "logits": np.asarray(out.logits)[:, -length:],
        "hidden_states": stream + [np.asarray(out.text_final)[:, -length:]],
    }
    if projector is not None and "pixel_values" in batch:
        value = dict(nnx.to_flat_state(sown))[(*case.projector.split("."), OUT)].get_value()[0]
        vision = [np.asarray(h) for h in out.vision_hidden_states]
        result.update(case.align(model, batch, vision, np.asarray(value)))
    return result


def decoder_reference(
    hf, batch: Mapping[str, np.ndarray], *, hooks: Mapping[str, str] = {}, positions: bool = True
) -> dict[str, Any]:
    """transformers' logits and every decoder hidden state for a processor batch, with the outputs of the modules
    `hooks` names (key -> module path) recorded under their keys. With `positions`, the rows get the positions
    `generate` gives left-padded rows; without, the model builds its own (Qwen's M-RoPE does so mask-aware)."""
    modules, out = dict(hf.named_modules()), {}
    handles = [
        modules[path].register_forward_hook(lambda m, a, y, key=key: out.__setitem__(key, y.detach().numpy()))
        for key, path in hooks.items()
    ]
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    if positions:
        inputs["position_ids"] = torch.tensor(hf_tiny.generate_positions(batch["attention_mask"]))
    try:
        with torch.no_grad():
            result = hf(**inputs, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    out["logits"] = result.logits.numpy()
    out["hidden_states"] = [h.numpy() for h in result.hidden_states]
    return out


def _ordered(out: dict[str, Any], prefix: str) -> list[np.ndarray]:
    """The hooked outputs `prefix.0`, `prefix.1`, ... popped from `out`, in order."""
    keys = sorted((k for k in out if k.startswith(prefix + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [out.pop(k) for k in keys]


# --- per-family pieces -------------------------------------------------------------------------------------------


def _save_llava(directory: str, seed: int, **config) -> str:
    return hf_tiny.save_tiny(directory, seed, processor=True, **config)


def _llava_reference(hf, batch):
    out = decoder_reference(hf, batch, hooks={"projector": "model.multi_modal_projector"})
    if "pixel_values" in batch:
        with torch.no_grad():
            states = hf.model.vision_tower(torch.tensor(batch["pixel_values"]), output_hidden_states=True)
        out["vision"] = [h.numpy() for h in states.hidden_states]
    return out


def _llava_align(model, batch, vision, projector):
    n = len(batch["pixel_values"])
    return {"vision": [h[:n] for h in vision], "projector": projector[:n]}


def _llava_pool(model, batch, site, value):
    return value.mean(1)  # [images, positions (CLS included), width]


def _next_real_tiles(model, batch) -> np.ndarray:
    """Our tile rows that are real tiles of an image, in image order (the rows transformers keeps)."""
    tiles = model.spec.max_tiles
    used = [image_layout(size, model.spec)[0] for size in batch["image_sizes"]]
    return np.concatenate([np.arange(i * tiles, i * tiles + n) for i, n in enumerate(used)])


def _next_reference(hf, batch):
    out = decoder_reference(hf, batch, hooks={"projector": "model.multi_modal_projector"})
    if "pixel_values" in batch:
        with torch.no_grad():
            features = hf.model.get_image_features(
                torch.tensor(batch["pixel_values"]), torch.tensor(batch["image_sizes"]), output_hidden_states=True
            )
        out["vision"] = [h.numpy() for h in features.hidden_states]
    return out


def _next_align(model, batch, vision, projector):
    real = _next_real_tiles(model, batch)
    return {"vision": [h[real] for h in vision], "projector": projector[real]}


def _next_pool(model, batch, site, value):
    tiles = [image_layout(size, model.spec)[0] for size in batch["image_sizes"]]
    edges = np.concatenate([[0], np.cumsum(tiles)])
    return np.stack([value[a:b].mean((0, 1)) for a, b in zip(edges[:-1], edges[1:])])  # an image's tiles, positions


def _save_qwen(version: str, directory: str, seed: int, **config) -> str:
    directory = hf_qwen.save_qwen(directory, hf_qwen.qwen_config(version, **config), seed)
    hf_qwen.save_qwen_processor(directory, version)
    return directory


def _qwen_reset(hf) -> None:
    hf.model.rope_deltas = None  # transformers keeps the last call's M-RoPE deltas on the model


def _qwen_reference(hf, batch):
    _qwen_reset(hf)
    hooks = {f"vision.{i}": f"model.visual.blocks.{i}" for i in range(len(hf.model.visual.blocks))}
    out = decoder_reference(hf, batch, hooks={**hooks, "projector": "model.visual.merger"}, positions=False)
    out["vision"] = _ordered(out, "vision")
    return out


def _qwen_align(model, batch, vision, merger):
    n = len(batch["pixel_values"])  # patches; both sides in window order for Qwen2.5
    return {"vision": [h[:n] for h in vision], "projector": merger[: n // 4]}


def _qwen_pool(model, batch, site, value):
    patches = batch["image_grid_thw"].prod(1)  # images stay contiguous in window order, so ranges pool them
    edges = np.concatenate([[0], np.cumsum(patches if ".blocks." in site else patches // 4)])
    return np.stack([value[a:b].mean(0) for a, b in zip(edges[:-1], edges[1:])])


def _save_internvl(directory: str, seed: int, **config) -> str:
    return hf_internvl.save_internvl(directory, hf_internvl.internvl_config(**config), seed)


def _internvl_reference(hf, batch):
    out = decoder_reference(hf, batch, hooks={"projector": "model.multi_modal_projector"})
    if "pixel_values" in batch:
        with torch.no_grad():
            states = hf.model.vision_tower(pixel_values=torch.tensor(batch["pixel_values"]), output_hidden_states=True)
        out["vision"] = [h.numpy() for h in states.hidden_states]
    return out


def _internvl_align(model, batch, vision, projector):
    tiles = len(batch["pixel_values"])  # ours pads the tiles to a power-of-two count
    return {"vision": [h[:tiles] for h in vision], "projector": projector[:tiles]}


def _internvl_pool(model, batch, site, value):
    ids = batch["input_ids"] == model.image_token_id
    runs = [
        n // hf_internvl.TOKENS_PER_TILE for row in ids for n in np.diff(np.flatnonzero(np.diff(np.r_[0, row, 0])))[::2]
    ]
    edges = np.concatenate([[0], np.cumsum(runs)])
    return np.stack([value[a:b].mean((0, 1)) for a, b in zip(edges[:-1], edges[1:])])  # an image's tiles, positions


def _save_mllama(directory: str, seed: int, **config) -> str:
    return hf_mllama.save_mllama(directory, hf_mllama.mllama_config(**config), seed)


def _mllama_reference(hf, batch):
    hooks = {}
    if "pixel_values" in batch:
        vision = "model.vision_model"
        local, glob = (
            len(hf.model.vision_model.transformer.layers),
            len(hf.model.vision_model.global_transformer.layers),
        )
        hooks = {f"vision.{i}": f"{vision}.transformer.layers.{i}" for i in range(local)}
        hooks |= {f"vision.{local + i}": f"{vision}.global_transformer.layers.{i}" for i in range(glob)}
        hooks["projector"] = "model.multi_modal_projector"
    out = decoder_reference(hf, batch, hooks=hooks)
    if "pixel_values" in batch:
        out["vision"] = _ordered(out, "vision")
    return out


def _mllama_align(model, batch, vision, projector):
    # Our states are [embeddings, each local layer, each global layer]; transformers' hooks see the layers.
    shape = batch["pixel_values"].shape[:3] + (model.spec.vision.num_patches, -1)
    return {"vision": vision[1:], "projector": projector.reshape(shape)}


def _mllama_pool(model, batch, site, value):
    spec = model.spec.vision
    b, n, t = batch["pixel_values"].shape[:3]
    tiles = batch["aspect_ratio_mask"].reshape(b * n, t) > 0
    if site == "model.multi_modal_projector":
        values = value.reshape(b * n, t, spec.num_patches, -1)
    else:  # the padded positions of each tile are not the image's
        values = value.reshape(b * n, t, spec.padded_patches, -1)[:, :, : spec.num_patches]
    return np.stack([values[i][tiles[i]].reshape(-1, values.shape[-1]).mean(0) for i in range(b * n)])


def _save_text_tokenizer(directory: str, tokenizer, chat_template: str) -> str:
    tokenizer.chat_template = chat_template
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(directory)
    return directory


def _save_llama(directory: str, seed: int, **config) -> str:
    directory = hf_tiny.save_llama(directory, seed, **config)
    return _save_text_tokenizer(directory, hf_tiny.tiny_tokenizer(), hf_tiny.CHAT_TEMPLATE)


def _save_qwen2(directory: str, seed: int, *, tie: bool = False) -> str:
    config = Qwen2Config(**hf_qwen.qwen_text_config(), tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    hf_tiny.randomize(model, seed)
    if tie:
        model.tie_weights()
    model.save_pretrained(directory)
    return _save_text_tokenizer(directory, hf_qwen.qwen_tokenizer(), hf_qwen.CHAT_TEMPLATE)


def _hub_clip(key: str) -> str:
    """The hub's LLaVA keys: the CLIP tower keeps `vision_model.`."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _drop(batch: dict, key: str) -> dict:
    return {k: v for k, v in batch.items() if k != key}


# --- the table ---------------------------------------------------------------------------------------------------

Edit = Callable[[dict], None]
BadInput = Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class FamilyCase:
    """One family of the conformance table."""

    name: str
    build: Callable[..., str]
    """`build(directory, seed, **config)`: a randomised checkpoint with its processor (or tokenizer) and chat
    template in `directory`; `config` is one of `variants`."""
    reference_class: type
    """transformers' model class."""
    reference: Callable[[Any, dict], dict]
    """transformers' activations for a processor batch (the module docstring's dict)."""
    variants: dict[str, dict]
    """Named config variants; the first is the family's default checkpoint, the others add parity coverage."""
    rows: Rows = MIXED
    nested_images: bool = False
    """The processor takes one image list per row (else one flat list)."""
    image_sites: dict[str, int] = dataclasses.field(default_factory=dict)
    """Image-domain sites (a vision-tower MLP, the projector) with their widths; empty for a text family."""
    projector: str | None = None
    """The module whose output is the image features the decoder takes."""
    align: Callable | None = None
    """`align(model, batch, vision_hidden_states, projector)`: our vision states and projector output as
    transformers lays them out, `{"vision": [...], "projector": ...}`."""
    pool_images: Callable | None = None
    """`pool_images(model, batch, site, hooked)`: transformers' hooked output at an image-domain site, pooled to
    one row per image input (in `model.image_rows` order)."""
    extra_gates: tuple[str, ...] = ()
    """Sites gated (beside two decoder sites and the image sites) in the generate and export checks."""
    layouts: dict[str, Callable[[str], str]] = dataclasses.field(default_factory=dict)
    """Key rewrites of the saved checkpoint (`save_pretrained`'s layout) into the other layouts the family's
    checkpoints are found in besides transformers' `state_dict()` names (the hub's, where it differs)."""
    refused_configs: tuple[tuple[Edit, str], ...] = ()
    """config.json edits sgm_jax must refuse (UnsupportedConfigError), with the message naming them."""
    bad_inputs: tuple[tuple[BadInput, str], ...] = ()
    """Edits of the processor batch of `rows` the model must refuse (ValueError), with the message."""
    reset_reference: Callable[[Any], None] | None = None
    """Called before each transformers `generate` (state transformers keeps between calls)."""

    def save(self, directory: str, seed: int, variant: str | None = None) -> str:
        """The family's checkpoint (`variant`, else the default) with its processor, in `directory`."""
        return self.build(str(directory), seed, **self.variants[variant or self.default])

    @property
    def default(self) -> str:
        return next(iter(self.variants))

    @property
    def images(self) -> bool:
        return bool(self.image_sites)

    def batch(self, processor, rows: Rows | None = None, seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
        """The processor's batch for `rows` (default: the family's mixed rows)."""
        return processor_batch(
            processor, self.rows if rows is None else rows, seed, nested=self.nested_images, **kwargs
        )

    def load_reference(self, directory: str):
        """transformers' model of `directory`, fp32, eager attention, eval mode."""
        return hf_tiny.load_reference(directory, self.reference_class)


LLAVA_CONFIG_REFUSALS = (
    (
        lambda c: c["text_config"]["rope_parameters"].update(rope_type="linear", factor=2.0),
        r"text_config: rope_parameters.rope_type='linear' is not supported",
    ),
    (
        lambda c: c["text_config"].update(sliding_window=16),
        r"text_config: config fields .* not implement: sliding_window=16",
    ),
    (lambda c: c["vision_config"].update(hidden_act="relu2"), r"vision_config: hidden_act='relu2' is not supported"),
    (lambda c: c.update(vision_feature_select_strategy="cls"), r"vision_feature_select_strategy(.|\n)*cls"),
    (lambda c: c.update(vision_feature_layer=7), r"vision_feature_layer=7 is out of range"),
    (lambda c: c.update(model_type="gemma3"), r"model_type='gemma3'"),
)

# A text family takes no image inputs.
TEXT_BAD_INPUTS = (
    (
        lambda b: dict(b, pixel_values=np.zeros((1, 3, 28, 28), np.float32)),
        r"got inputs \['pixel_values'\] it does not take; it takes no image inputs",
    ),
)
QWEN_BAD_INPUTS = (
    (lambda b: dict(b, image_grid_thw=b["image_grid_thw"][:2]), "image_grid_thw implies"),
    (
        lambda b: dict(b, image_grid_thw=b["image_grid_thw"][[1, 0, 2]]),
        r"runs of \[24, 4, 15\] image tokens .* images of \[4, 24, 15\] tokens",
    ),
    (
        lambda b: dict(b, pixel_values_videos=b["pixel_values"], video_grid_thw=b["image_grid_thw"]),
        "video inputs are not supported",
    ),
    (lambda b: dict(b, mm_token_type_ids=np.zeros_like(b["input_ids"])), "mm_token_type_ids"),
)
QWEN_REFUSALS = (
    (lambda c: c["text_config"].update(use_sliding_window=True), "use_sliding_window=True"),
    (lambda c: c["text_config"]["rope_parameters"].update(mrope_section=[2, 2, 2]), "mrope_section"),
    (lambda c: c["vision_config"].update(hidden_act="relu2"), "hidden_act='relu2'"),
)
# Two images of different grids in one row, one image after left padding, and a text-only row.
QWEN_ROWS: Rows = (
    ("describe the picture please", (hf_qwen.GRID_12x8, hf_qwen.GRID_4x4)),
    ("what is in this image", (hf_qwen.GRID_6x10,)),
    ("a red square", ()),
)
QWEN_VARIANTS = {"gqa": dict(kv_heads=2), "mha-tied": dict(kv_heads=4, tie=True)}


def _qwen_case(name: str, version: str, vision_mlp: str, width: int) -> FamilyCase:
    return FamilyCase(
        name=name,
        build=functools.partial(_save_qwen, version),
        reference_class=hf_qwen.MODELS[version],
        reference=_qwen_reference,
        variants=QWEN_VARIANTS,
        rows=QWEN_ROWS,
        nested_images=True,
        image_sites={f"model.visual.blocks.1.mlp.{vision_mlp}": width, "model.visual.merger": 64},
        projector="model.visual.merger",
        align=_qwen_align,
        pool_images=_qwen_pool,
        extra_gates=(f"model.visual.blocks.0.mlp.{vision_mlp}", "model.visual.merger.mlp.0"),
        refused_configs=QWEN_REFUSALS,
        bad_inputs=QWEN_BAD_INPUTS,
        reset_reference=_qwen_reset,
    )


FAMILIES: dict[str, FamilyCase] = {
    case.name: case
    for case in (
        FamilyCase(
            name="llava-1.5",
            build=_save_llava,
            reference_class=LlavaForConditionalGeneration,
            reference=_llava_reference,
            variants={
                "mha-layer-2-default": dict(),
                "gqa-layer-1-full-biases-tied": dict(
                    kv_heads=2, feature_layer=-1, strategy="full", attention_bias=True, mlp_bias=True, tie=True
                ),
                "mqa-layer-list-default-no-projector-bias": dict(
                    kv_heads=1, feature_layer=[-3, -1], strategy="default", projector_bias=False
                ),
                "gqa-layer-list-full": dict(kv_heads=2, feature_layer=[0, -2], strategy="full"),
            },
            image_sites={"model.vision_tower.encoder.layers.1.mlp.fc1": 48, "model.multi_modal_projector": 32},
            projector="model.multi_modal_projector",
            align=_llava_align,
            pool_images=_llava_pool,
            extra_gates=("model.multi_modal_projector.linear_1", "model.vision_tower.encoder.layers.0.self_attn"),
            layouts={"hub": _hub_clip},
            refused_configs=LLAVA_CONFIG_REFUSALS,
            bad_inputs=(
                (
                    lambda b: dict(b, pixel_values=b["pixel_values"][:2]),
                    r"input_ids hold 48 <image> tokens .* 2 image\(s\) give 32 features \(16 per image\)",
                ),
                (lambda b: _drop(b, "pixel_values"), r"input_ids hold 48 <image> tokens .* 0 image\(s\)"),
                (
                    lambda b: dict(b, pixel_values=np.zeros((3, 3, 32, 32), np.float32)),
                    r"pixel_values has shape \(3, 3, 32, 32\); the vision tower expects \[images, 3, 28, 28\]",
                ),
            ),
        ),
        FamilyCase(
            name="llava-next",
            build=lambda directory, seed, **config: hf_next.save_next(directory, hf_next.next_config(**config), seed),
            reference_class=LlavaNextForConditionalGeneration,
            reference=_next_reference,
            variants={"mha-untied": dict(), "gqa-tied-two-layers": dict(kv_heads=2, tie=True, feature_layer=[-3, -1])},
            image_sites={"model.vision_tower.encoder.layers.1.mlp.fc1": 48, "model.multi_modal_projector": 32},
            projector="model.multi_modal_projector",
            align=_next_align,
            pool_images=_next_pool,
            extra_gates=("model.multi_modal_projector.linear_1",),
            layouts={"hub": _hub_clip},
            refused_configs=(
                (lambda c: c.update(vision_feature_select_strategy="full"), "vision_feature_select_strategy='full'"),
                (lambda c: c.update(image_grid_pinpoints=[[28, 50]]), "image_grid_pinpoints"),
            ),
            bad_inputs=(
                # 61x20 (2x1 tiles) needs fewer tokens than the 30x50 image's run it is swapped into.
                (
                    lambda b: dict(b, image_sizes=b["image_sizes"][[1, 0, 2]]),
                    r"a run of \d+ image tokens .* image 0 \(size \[61, 20\]\) needs \d+",
                ),
                (lambda b: dict(b, pixel_values=b["pixel_values"][:2]), "3 image_sizes"),
                (lambda b: _drop(b, "image_sizes"), "come together"),
            ),
        ),
        _qwen_case("qwen2-vl", "2", "fc1", 64),
        _qwen_case("qwen2.5-vl", "2.5", "up_proj", 48),
        FamilyCase(
            name="internvl",
            build=_save_internvl,
            reference_class=InternVLForConditionalGeneration,
            reference=_internvl_reference,
            variants={
                "qwen2-tied": dict(),
                "llama-qknorm-rmsnorm-final-ln-untied": dict(
                    text="llama", qk_norm=True, norm_type="rms_norm", mean_pooling=False, tie=False
                ),
                "qwen2-untied-layer-2": dict(mean_pooling=False, feature_layer=-2, tie=False),
            },
            image_sites={"model.vision_tower.encoder.layer.1.mlp.fc1": 64, "model.multi_modal_projector": 64},
            projector="model.multi_modal_projector",
            align=_internvl_align,
            pool_images=_internvl_pool,
            extra_gates=("model.vision_tower.encoder.layer.0.attention", "model.multi_modal_projector.linear_1"),
            refused_configs=(
                (lambda c: c.update(vision_feature_select_strategy="full"), "vision_feature_select_strategy='full'"),
                (lambda c: c.update(downsample_ratio=0.3), "downsample_ratio=0.3"),
                (lambda c: c["vision_config"].update(image_size=[28, 42]), r"image_size=\[28, 42\]"),
                (lambda c: c["text_config"].update(model_type="mistral"), "model_type='mistral'"),
            ),
            bad_inputs=(
                (
                    lambda b: dict(b, pixel_values=b["pixel_values"][:2]),
                    r"runs of \[4, 4, 4\] image tokens .* 2 tile\(s\) give 8 features",
                ),
                (
                    lambda b: dict(b, pixel_values=b["pixel_values"][:, :, :14]),
                    r"InternVL takes tiles \[tiles, 3, 28, 28\]",
                ),
            ),
        ),
        FamilyCase(
            name="mllama",
            build=_save_mllama,
            reference_class=MllamaForConditionalGeneration,
            reference=_mllama_reference,
            variants={"gqa": dict(kv_heads=2), "mha": dict(kv_heads=4)},
            # 1, 2 and 4 tiles; one and two images per row; left padding; a text-only row.
            rows=(
                ("describe the picture please", ((20, 20),)),
                ("a red square above a blue circle", ((25, 52), (40, 40))),
                ("that is a nice word", ()),
            ),
            nested_images=True,
            image_sites={
                "model.vision_model.global_transformer.layers.1.mlp.fc1": 64,
                "model.multi_modal_projector": 64,
            },
            projector="model.multi_modal_projector",
            align=_mllama_align,
            pool_images=_mllama_pool,
            extra_gates=(
                "model.language_model.layers.1.cross_attn.q_proj",
                "model.language_model.layers.3.cross_attn.o_proj",
                "model.vision_model.transformer.layers.1.mlp.fc1",
            ),
            refused_configs=(
                (lambda c: c["vision_config"].update(vision_output_dim=64), "vision_output_dim=64"),
                (lambda c: c["text_config"]["rope_parameters"].update(rope_type="yarn"), "rope_type='yarn'"),
                (
                    lambda c: c["vision_config"].update(intermediate_layers_source="middle"),
                    "intermediate_layers_source",
                ),
            ),
            bad_inputs=(
                (
                    lambda b: dict(b, cross_attention_mask=b["cross_attention_mask"][:, :, :1]),
                    r"cross_attention_mask is \[3, \d+, 1, 4\]; for 2 image\(s\) per row",
                ),
                (
                    lambda b: dict(b, aspect_ratio_ids=np.where(b["aspect_ratio_ids"] == 0, 9, b["aspect_ratio_ids"])),
                    r"aspect_ratio_ids must lie in \[0, 8\] .* got 9 at \[row, image\] \[0, 1\]",
                ),
            ),
        ),
        FamilyCase(
            name="llama",
            build=_save_llama,
            reference_class=LlamaForCausalLM,
            reference=decoder_reference,
            variants={
                "gqa": dict(),
                "legacy-rope-theta": dict(legacy_rope_theta=500000.0),
                "llama3-rope": dict(rope_parameters=hf_tiny.LLAMA3),
            },
            rows=TEXT,
            bad_inputs=TEXT_BAD_INPUTS,
            refused_configs=(
                (
                    lambda c: c["rope_parameters"].update(rope_type="linear", factor=2.0),
                    r"rope_parameters.rope_type='linear' is not supported",
                ),
                (lambda c: c.update(hidden_act="relu2"), r"hidden_act='relu2' is not supported"),
            ),
        ),
        FamilyCase(
            name="qwen2",
            build=_save_qwen2,
            reference_class=Qwen2ForCausalLM,
            reference=decoder_reference,
            variants={"untied": dict(), "tied": dict(tie=True)},
            rows=TEXT,
            bad_inputs=TEXT_BAD_INPUTS,
            refused_configs=(
                (lambda c: c.update(use_sliding_window=True), "use_sliding_window=True"),
                (lambda c: c["rope_parameters"].update(rope_type="yarn", factor=2.0), "rope_type='yarn'"),
                (lambda c: c.update(head_dim=32), "head_dim=32 differs"),
            ),
        ),
    )
}
IMAGE_FAMILIES: list[str] = [name for name, case in FAMILIES.items() if case.images]
TEXT_FAMILIES: list[str] = [name for name, case in FAMILIES.items() if not case.images]
