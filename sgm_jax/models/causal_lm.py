"""What every family's top-level model is: the contract the rest of sgm_jax relies on, so nothing outside a
family's own module names a family.

A family subclasses `CausalLM` in its module (spec, config reading, key layouts, the inputs its forward takes,
image-token rules) and adds one line to `sgm_jax.models.registry`. Loading, batching, capture, generation,
likelihood and export speak only to this interface.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from sgm_jax.models.batch import ModelBatch
from sgm_jax.models.cache import KVCache
from sgm_jax.models.compiled import compiled
from sgm_jax.models.layers import lm_head
from sgm_jax.runtime.errors import InputError

# Tensor-name prefix pairs (from, to), first match wins.
Layout = tuple[tuple[str, str], ...]


@struct.dataclass
class ModelOutput:
    """What `CausalLM.forward` returns (a pytree: it leaves a jitted function whole)."""

    logits: jax.Array
    """`[batch, seq, vocab]`."""
    text_stream: list[jax.Array]
    """The residual stream entering each decoder layer, then the last layer's output."""
    text_final: jax.Array
    """The final norm's output (transformers' last hidden state)."""
    vision_hidden_states: list[jax.Array]
    """The vision tower's hidden states (empty without images or for a text-only model)."""
    image_segments: dict[str, jax.Array]
    """Which image each row (or each position) of an image-domain stream belongs to, where rows are not images
    (packed patches, tiles), keyed by the site name it describes: an image-domain root (`model.vision_tower`),
    or a site inside one whose rows differ from its root's (Qwen's merger and its input). A site reads its own
    entry, else its nearest ancestor's; without one its rows are images. Capture pools image-domain sites by it."""


@dataclasses.dataclass(frozen=True)
class Embedded:
    """What a family's `embed` gives the decoder: the input embeddings (image features in place), and what the
    forward reports of the vision side."""

    embeds: jax.Array
    positions: jax.Array | None = None
    """Positions where the family computes its own (M-RoPE `[3, batch, seq]`); None: counted from the mask."""
    rope_deltas: jax.Array | None = None
    """`[batch]` shift of later positions after a prefill with `positions` (M-RoPE)."""
    extras: Any = None
    """The decoder layers' per-call inputs (`sgm_jax.models.decoder.DecoderContext.extras`)."""
    vision_hidden: list = dataclasses.field(default_factory=list)
    """The vision tower's hidden states (empty without images)."""
    segments: dict = dataclasses.field(default_factory=dict)
    """`ModelOutput.image_segments`: the image of each row or position, keyed by the site name it describes."""


class CausalLM(nnx.Module):
    """`model(input_ids, attention_mask=..., **image_inputs) -> logits [batch, seq, vocab]`, as in transformers."""

    model_type: ClassVar[str]
    """The HF `model_type` the family is registered under."""
    spec_class: ClassVar[type]
    """Its spec: `spec_class.from_hf(config dict)` and `spec.to_hf()`."""
    load_layout: ClassVar[Layout] = ()
    """Checkpoint key prefix -> in-memory name prefix, for every layout the family's checkpoints are found in."""
    save_layout: ClassVar[Layout] = ()
    """In-memory name prefix -> the prefix transformers' `save_pretrained` writes (export)."""
    decoder_layers: ClassVar[str]
    """Module path of the decoder's layer list (where SGM's default sites are)."""
    image_inputs: ClassVar[tuple[str, ...]] = ()
    """Names of the processor outputs the model takes besides `input_ids` and `attention_mask`."""

    special_tokens: tuple[tuple[str, Any], ...] = ()
    """The checkpoint's EOS and pad ids (`sgm_jax.weights.loading.special_tokens`), read by `sgm_jax.generate`."""
    max_positions: int | None = None
    """The text config's `max_position_embeddings` (set by `load_model`), or None if it states none: the longest
    sequence `sgm_jax.decoding.lengths` lets through."""

    backbone_class: ClassVar[type]
    """The module under `model.`, built from the family's spec (and holding it); the LM head is built from its text
    spec, or is None where the checkpoint ties it to the embeddings."""

    def __init__(self, spec, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.model = self.backbone_class(spec, dtype=dtype, rngs=rngs)
        self.lm_head = lm_head(getattr(spec, "text", spec), dtype=dtype, rngs=rngs)

    @property
    def spec(self):
        return self.model.spec

    @classmethod
    def processor_class(cls) -> type | None:
        """The processor class to read the checkpoint's processor files with, or None for `AutoProcessor`."""
        return None

    @property
    def image_token_id(self) -> int | None:
        """The id of the token image features replace (the spec's `image_token_id`), or None for a text-only
        model."""
        return getattr(self.spec, "image_token_id", None)

    @property
    def tokens_per_image(self) -> int:
        """How many tokens one image adds to a prompt (an estimate where it varies; 0 for text-only)."""
        return 0

    def check_inputs(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> None:
        """Fail, naming what is wrong, unless the image inputs fit the prompt (host arrays, before any compile)."""
        unknown = sorted(set(images) - set(self.image_inputs))
        if unknown:
            takes = list(self.image_inputs) or "no image inputs (a text-only model)"
            raise InputError(f"{type(self).__name__} got inputs {unknown} it does not take; it takes {takes}")

    def prepare_inputs(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, images: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """The checked processor outputs as `forward` takes them, besides the tokens (host arrays): where a
        family pads images to static shapes or derives positions on the host, it does so here."""
        return {name: np.asarray(value) for name, value in images.items()}

    def pad_images(self, inputs: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """`forward` inputs with room for `count` images, so a batch's image count does not change its shapes:
        zero images appended to every per-image input (a family whose shapes do not count images overrides)."""
        padded = dict(inputs)
        for name in self.image_inputs:
            if name in padded and len(padded[name]) < count:
                value = padded[name]
                padded[name] = np.concatenate([value, np.zeros((count - len(value),) + value.shape[1:], value.dtype)])
        return padded

    def image_rows(self, input_ids: np.ndarray, images: Mapping[str, Any]) -> np.ndarray:
        """The batch row of each image, in the order of the image inputs (host arrays)."""
        return np.zeros(0, np.int32)

    @property
    def decoder(self) -> nnx.Module:
        """The language model (`sgm_jax.models.llama.LlamaModel` or a subclass)."""
        raise NotImplementedError

    def embed(self, input_ids: jax.Array, **inputs) -> Embedded:
        """Traceable: the decoder's inputs from the tokens and `prepare_inputs`' arrays."""
        return Embedded(self.decoder.embed_tokens(input_ids))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head, or the transposed embedding when the checkpoint ties them (`lm_head` None)."""
        lm_head = getattr(self, "lm_head", None)
        return self.decoder.embed_tokens.attend(hidden) if lm_head is None else lm_head(hidden)

    def forward(self, input_ids, *, attention_mask=None, **inputs) -> ModelOutput:
        """Traceable forward over `prepare_inputs`' arrays: the logits and the streams capture reads."""
        input_ids, attention_mask = _tokens(input_ids, attention_mask)
        embedded = self.embed(input_ids, **inputs)
        hidden, stream, _ = self.decoder(
            embedded.embeds, attention_mask, positions=embedded.positions, extras=embedded.extras
        )
        return ModelOutput(
            logits=self.logits(hidden),
            text_stream=stream,
            text_final=hidden,
            vision_hidden_states=embedded.vision_hidden,
            image_segments=embedded.segments,
        )

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty cache with room for `max_len` tokens per row."""
        return self.decoder.init_cache(batch, max_len)

    def forward_with_cache(
        self, input_ids, cache: KVCache, *, attention_mask=None, last_only: bool = False, **inputs
    ) -> tuple[jax.Array, KVCache]:
        """Traceable: the logits of new tokens run after those in `cache` (images fill their positions as in
        `forward`), and the updated cache. With `last_only`, only the last position's logits `[batch, vocab]`
        (all a decoding step needs)."""
        input_ids, attention_mask = _tokens(input_ids, attention_mask)
        embedded = self.embed(input_ids, **inputs)
        hidden, _, cache = self.decoder(
            embedded.embeds,
            attention_mask,
            positions=embedded.positions,
            cache=cache,
            rope_deltas=embedded.rope_deltas,
            extras=embedded.extras,
        )
        return self.logits(hidden[:, -1] if last_only else hidden), cache

    def __call__(self, input_ids, *, attention_mask=None, **images) -> jax.Array:
        """Logits; concrete inputs are checked and run through one compiled function of the model."""
        images = {name: value for name, value in images.items() if value is not None}
        if isinstance(input_ids, jax.core.Tracer):
            return self.forward(input_ids, attention_mask=attention_mask, **images).logits
        ids = np.asarray(input_ids)
        self.check_inputs(ids, images)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        return prepared_logits(self, ModelBatch(ids, mask, self.prepare_inputs(ids, mask, images)))


def _tokens(input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
    input_ids = jnp.asarray(input_ids)
    return input_ids, jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask)


@compiled
def prepared_logits(model: CausalLM, batch: ModelBatch) -> jax.Array:
    """Logits of a batch already checked and prepared (`sgm_jax.models.batch.model_batch`)."""
    return batch.forward(model).logits


@functools.cache
def images_only(stock: type) -> type:
    """transformers' processor `stock` under its own name (so saved files read as the hub's) without a video
    processor in `__init__`, which is where processors take their parts from: the stock one needs torchvision,
    and sgm_jax takes no video. For processors whose `__init__` takes nothing else (transformers reloads the
    arguments it names)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        stock.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return type(stock.__name__, (stock,), {"__init__": __init__})
