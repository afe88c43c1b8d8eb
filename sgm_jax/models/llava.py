"""LLaVA-1.5: CLIP tower -> 2-layer GELU projector -> Llama, image features scattered into `<image>` tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.causal_lm import CausalLM, Embedded
from sgm_jax.models.clip import CLIPVisionModel, ClipVisionSpec
from sgm_jax.models.config import UnsupportedConfigError, check_fields, require
from sgm_jax.models.layers import ACTIVATIONS, Activation, Linear, scatter_image_features
from sgm_jax.models.llama import LlamaModel, LlamaSpec
from sgm_jax.models.site import ImageDomain, Site
from sgm_jax.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class LlavaSpec:
    # The config's `model_type`, and the fields a variant reads besides LLaVA's (in `_own_fields`).
    hf_model_type: ClassVar[str] = "llava"
    own_fields: ClassVar[tuple[str, ...]] = ()

    text: LlamaSpec
    vision: ClipVisionSpec
    image_token_id: int
    vision_feature_layer: int | tuple[int, ...]
    vision_feature_select_strategy: str
    projector_hidden_act: str
    multimodal_projector_bias: bool

    @property
    def features_per_image(self) -> int:
        """How many `<image>` tokens one image fills."""
        return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else layer

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str = "config") -> LlavaSpec:
        require(where, "model_type", cfg.get("model_type"), [cls.hf_model_type])
        check_fields(
            cfg,
            where=where,
            used=[
                "text_config",
                "vision_config",
                "image_token_index",
                "image_token_id",
                "vision_feature_layer",
                "vision_feature_select_strategy",
                "projector_hidden_act",
                "multimodal_projector_bias",
                "tie_word_embeddings",
                *cls.own_fields,
            ],
            inert=["image_seq_length", "ignore_index", "vocab_size"],
        )
        vision = ClipVisionSpec.from_hf(cfg["vision_config"], where=f"{where}.vision_config")
        text = LlamaSpec.from_hf(
            cfg["text_config"],
            where=f"{where}.text_config",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
        layer = cfg.get("vision_feature_layer", -2)
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        n_states = vision.num_hidden_layers + 1
        bad = [i for i in layers if not -n_states <= i < n_states]
        if bad or not layers:
            raise UnsupportedConfigError(
                f"{where}: vision_feature_layer={layer!r} is out of range for a vision "
                f"tower with {n_states} hidden states"
            )
        token = cfg.get("image_token_index", cfg.get("image_token_id"))
        return cls(
            text=text,
            vision=vision,
            image_token_id=int(token),
            vision_feature_layer=layer if isinstance(layer, int) else layers,
            vision_feature_select_strategy=require(
                where,
                "vision_feature_select_strategy",
                cfg.get("vision_feature_select_strategy", "default"),
                ["default", "full"],
            ),
            projector_hidden_act=require(
                where, "projector_hidden_act", cfg.get("projector_hidden_act", "gelu"), ACTIVATIONS
            ),
            multimodal_projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
            **cls._own_fields(cfg, where, vision),
        )

    @classmethod
    def _own_fields(cls, cfg: dict[str, Any], where: str, vision: ClipVisionSpec) -> dict[str, Any]:
        """A variant's own spec fields, read (strictly) from its config."""
        return {}

    def to_hf(self) -> dict[str, Any]:
        """The `LlavaConfig` dict this spec reads back from (what export and orbax checkpoints write)."""
        text = self.text.to_hf()
        del text["architectures"]
        layer = self.vision_feature_layer
        return {
            "model_type": "llava",
            "architectures": ["LlavaForConditionalGeneration"],
            "text_config": text,
            "vision_config": self.vision.to_hf(),
            "image_token_index": self.image_token_id,
            "vision_feature_layer": layer if isinstance(layer, int) else list(layer),
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "projector_hidden_act": self.projector_hidden_act,
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "image_seq_length": self.features_per_image,
        }


class LlavaMultiModalProjector(ImageDomain, Site):
    output_linear, input_linears, activation_feeds = "linear_2", ("linear_1",), "linear_2"

    def __init__(self, spec: LlavaSpec, *, dtype, rngs: nnx.Rngs):
        d_in, d = spec.vision.hidden_size * len(spec.feature_layers), spec.text.hidden_size
        bias = spec.multimodal_projector_bias
        self.linear_1 = Linear(d_in, d, use_bias=bias, axes=(None, "embed"), dtype=dtype, rngs=rngs)
        self.act = Activation(spec.projector_hidden_act, d)
        self.linear_2 = Linear(d, d, use_bias=bias, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaModel(nnx.Module):
    """A vision tower, a projector and the Llama-shaped decoder; a family on LLaVA's interface (InternVL) swaps the
    tower and projector classes and its `image_features`."""

    tower_class: ClassVar[type] = CLIPVisionModel
    projector_class: ClassVar[type] = LlavaMultiModalProjector

    def __init__(self, spec: LlavaSpec, *, dtype, rngs: nnx.Rngs):
        self.spec = spec
        self.vision_tower = self.tower_class(spec.vision, dtype=dtype, rngs=rngs)
        self.multi_modal_projector = self.projector_class(spec, dtype=dtype, rngs=rngs)
        self.language_model = LlamaModel(spec.text, dtype=dtype, rngs=rngs)

    def image_features(self, pixel_values: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """Projected features `[images, features_per_image, text_hidden]` and the tower's hidden states (for
        LLaVA-NeXT, images are tiles)."""
        hidden_states, _ = self.vision_tower(pixel_values)
        start = 1 if self.spec.vision_feature_select_strategy == "default" else 0
        selected = jnp.concatenate([hidden_states[i][:, start:] for i in self.spec.feature_layers], axis=-1)
        return self.multi_modal_projector(selected), hidden_states


class LlavaForConditionalGeneration(CausalLM):
    """`model(input_ids, pixel_values=..., attention_mask=...) -> logits [batch, seq, vocab]`, as in transformers."""

    model_type, spec_class, decoder_layers = "llava", LlavaSpec, "model.language_model.layers"
    image_inputs = ("pixel_values",)
    backbone_class: ClassVar[type[LlavaModel]] = LlavaModel
    # The hub layout (`language_model.model.`, `vision_tower.vision_model.`), the one `save_pretrained` writes
    # in transformers 5.x (`vision_tower.` without `vision_model.`) and the `state_dict()` layout (`model.`).
    load_layout = (
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.vision_model.", "model.vision_tower."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    )
    save_layout = (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    )

    @property
    def tokens_per_image(self) -> int:
        return self.spec.features_per_image

    def check_inputs(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> None:
        """Exactly one `<image>` token per image feature, as transformers requires."""
        super().check_inputs(input_ids, images)
        pixels = images.get("pixel_values")
        found = int(np.sum(np.asarray(input_ids) == self.image_token_id))
        expected = (0 if pixels is None else len(pixels)) * self.tokens_per_image
        if found != expected:
            raise InputError(
                f"Image features and image tokens do not match: input_ids hold {found} <image> tokens "
                f"(id {self.image_token_id}) but {expected // self.tokens_per_image} image(s) give {expected} "
                f"features ({self.tokens_per_image} per image)"
            )

    def image_rows(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> np.ndarray:
        per_row = (np.asarray(input_ids) == self.image_token_id).sum(1) // self.tokens_per_image
        return np.repeat(np.arange(len(per_row)), per_row).astype(np.int32)

    @property
    def decoder(self) -> LlamaModel:
        return self.model.language_model

    def embed(self, input_ids: jax.Array, pixel_values=None) -> Embedded:
        """Token embeddings with the image features in the `<image>` positions, and the tower's hidden states."""
        embeds = self.decoder.embed_tokens(input_ids)
        if pixel_values is None:
            return Embedded(embeds)
        features, vision_hidden = self.model.image_features(jnp.asarray(pixel_values))
        embeds = scatter_image_features(embeds, input_ids, features, self.image_token_id)
        return Embedded(embeds, vision_hidden=vision_hidden)
