"""CLIP vision tower (LLaVA's image encoder) as Flax NNX modules named like HF's `CLIPVisionModel`."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from sgm_jax.models.attention import attend
from sgm_jax.models.config import check_fields, require
from sgm_jax.models.layers import ACTIVATIONS, Activation, LayerNorm, Linear, param
from sgm_jax.models.site import OUT, Fold, ImageDomain, Site, scale_axis
from sgm_jax.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class ClipVisionSpec:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_channels: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, where: str = "vision_config") -> ClipVisionSpec:
        require(where, "model_type", cfg.get("model_type"), ["clip_vision_model"])
        fields = [f.name for f in dataclasses.fields(cls)]
        check_fields(cfg, where=where, used=fields, inert=["projection_dim", "vocab_size"])
        require(where, "hidden_act", cfg["hidden_act"], ACTIVATIONS)
        return cls(**{name: cfg[name] for name in fields})

    def to_hf(self) -> dict[str, Any]:
        """The `CLIPVisionConfig` dict this spec reads back from."""
        return {"model_type": "clip_vision_model", **dataclasses.asdict(self)}


class PatchEmbedding(nnx.Module):
    """Non-overlapping `patch x patch` convolution without bias, computed as one matmul over unfolded patches."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"kernel": ("weight", (2, 3, 1, 0))}

    def __init__(self, spec: ClipVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.patch = spec.patch_size
        self.kernel = param(
            rngs,
            (spec.patch_size, spec.patch_size, spec.num_channels, spec.hidden_size),
            dtype,
            (None, None, None, "embed"),
        )

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """`[batch, channels, H, W]` (NCHW, as HF processors give) -> `[batch, patches, hidden]`."""
        b, c, h, w = pixel_values.shape
        p = self.patch
        x = pixel_values.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        return x @ self.kernel[...].reshape(p * p * c, -1)


class PositionTable(nnx.Module):
    """CLIP's learned position embeddings, added whole (not a site: HF computes them without the batch)."""

    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"embedding": ("weight", (0, 1))}

    def __init__(self, num: int, features: int, *, dtype, rngs: nnx.Rngs):
        self.embedding = param(rngs, (num, features), dtype, (None, "embed"))


class CLIPVisionEmbeddings(Site):
    hf_params: ClassVar[dict[str, tuple[str, tuple[int, ...]]]] = {"class_embedding": ("class_embedding", (0,))}

    def __init__(self, spec: ClipVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.class_embedding = param(rngs, (spec.hidden_size,), dtype, ("embed",))
        self.patch_embedding = PatchEmbedding(spec, dtype=dtype, rngs=rngs)
        self.position_embedding = PositionTable(spec.num_patches + 1, spec.hidden_size, dtype=dtype, rngs=rngs)

    def site_widths(self) -> tuple[None, int]:
        return None, self.class_embedding.shape[0]

    def folder(self, end: str) -> Fold | None:
        """The output is class token, patch projection and positions summed: scale all three."""
        if end != OUT:
            return None

        def fold(alpha):
            scale_axis(self.class_embedding, alpha, 0)
            scale_axis(self.patch_embedding.kernel, alpha, 3)
            scale_axis(self.position_embedding.embedding, alpha, 1)

        return fold

    def forward(self, pixel_values: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixel_values.astype(self.class_embedding.dtype))
        cls = jnp.broadcast_to(self.class_embedding[...], (patches.shape[0], 1, patches.shape[-1]))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding.embedding[...]


class VisionSelfAttention(Site):
    """Multi-head self-attention over a vision tower's positions: q, k, v and the output projection, named and
    biased as the checkpoint's are (CLIP's here; Mllama's tower names its output `o_proj` and has no biases)."""

    output_linear, input_linears = "out_proj", ("q_proj", "k_proj", "v_proj")
    use_bias: ClassVar[bool] = True

    def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs):
        self.num_heads, self.head_dim = heads, width // heads
        linear = lambda axes: Linear(width, width, use_bias=self.use_bias, axes=axes, dtype=dtype, rngs=rngs)
        for name in self.input_linears:
            setattr(self, name, linear(("embed", "heads")))
        setattr(self, self.output_linear, linear(("heads", "embed")))

    def forward(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        b, t, d = x.shape
        q, k, v = (getattr(self, n)(x).reshape(b, t, self.num_heads, self.head_dim) for n in self.input_linears)
        mixed = attend(q, k, v, bias=bias, scale=self.head_dim**-0.5).reshape(b, t, d)
        return getattr(self, self.output_linear)(mixed)


class CLIPMLP(Site):
    output_linear, input_linears, activation_feeds = "fc2", ("fc1",), "fc2"

    def __init__(self, spec: ClipVisionSpec, *, dtype, rngs: nnx.Rngs):
        d, f = spec.hidden_size, spec.intermediate_size
        self.fc1 = Linear(d, f, use_bias=True, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = Linear(f, d, use_bias=True, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.activation_fn = Activation(spec.hidden_act, spec.intermediate_size)

    def forward(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(Site):
    def __init__(self, spec: ClipVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.self_attn = VisionSelfAttention(spec.hidden_size, spec.num_attention_heads, dtype=dtype, rngs=rngs)
        self.layer_norm1 = LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = CLIPMLP(spec, dtype=dtype, rngs=rngs)
        self.layer_norm2 = LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps, dtype=dtype, rngs=rngs)

    def site_widths(self) -> tuple[int, int]:
        return self.layer_norm1.site_widths()

    def forward(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, spec: ClipVisionSpec, *, dtype, rngs: nnx.Rngs):
        self.layers = nnx.List([CLIPEncoderLayer(spec, dtype=dtype, rngs=rngs) for _ in range(spec.num_hidden_layers)])


class CLIPVisionModel(ImageDomain, nnx.Module):
    """CLIP ViT; LLaVA reads its per-layer hidden states, not the pooled output."""

    def __init__(self, spec: ClipVisionSpec, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.spec = spec
        self.embeddings = CLIPVisionEmbeddings(spec, dtype=dtype, rngs=rngs)
        self.pre_layrnorm = LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.encoder = CLIPEncoder(spec, dtype=dtype, rngs=rngs)
        self.post_layernorm = LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """Return HF's `hidden_states` (`num_layers + 1` entries, the first after `pre_layrnorm`) and the pooled CLS."""
        expected = (self.spec.num_channels, self.spec.image_size, self.spec.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise InputError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; the vision tower expects "
                f"[images, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(NCHW, as the HF processor returns)"
            )
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        hidden_states = [h]
        for layer in self.encoder.layers:
            h = layer(h)
            hidden_states.append(h)
        return hidden_states, self.post_layernorm(h[:, 0])
