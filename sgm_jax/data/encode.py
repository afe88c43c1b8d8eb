"""Samples -> model inputs through the checkpoint's own chat template and processor."""

from __future__ import annotations

import collections
import os
import weakref
from typing import Any

import numpy as np
from PIL import Image

from sgm_jax.data.images import ImageError, load_rgb
from sgm_jax.data.samples import DatasetError, Sample
from sgm_jax.runtime.errors import OptionError


class SquareImages:
    """The checkpoint's processor with every image first resized to `size` x `size` pixels (bicubic).

    One canonical resolution gives every image of a batch one patch grid, which is what lets a
    variable-resolution tower (Qwen2-VL) run batched per image with no cross-image masking; it also makes
    the image-token count per image fixed. Everything else is the wrapped processor's.
    """

    def __init__(self, processor, size: int):
        if int(size) < 1:
            raise OptionError(f"image size must be a positive number of pixels, got {size}")
        self.processor, self.image_size = processor, int(size)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["processor"], name)

    def __call__(self, *args, images=None, **kwargs):
        if images is not None:
            size = (self.image_size, self.image_size)
            images = [image.resize(size, Image.Resampling.BICUBIC) for image in images]
        return self.processor(*args, images=images, **kwargs)


class RawText:
    """The checkpoint's tokenizer reading each prompt as plain text, without its chat template: the continuation
    protocol of RealToxicityPrompts and of AurA's and Linear-AcT's toxicity evaluations (the model continues the
    prompt; an instruct model's default system prompt is not added). A response follows its prompt after a space, a
    system turn (a shield's) precedes it; the tokenizer adds its own special tokens (BOS). Text only: a sample with
    an image is refused, as raw text has no place for it."""

    def __init__(self, processor):
        self.processor = processor

    def __getattr__(self, name: str):
        return getattr(self.__dict__["processor"], name)

    def __call__(self, *args, **kwargs):
        return self.processor(*args, **kwargs)

    @staticmethod
    def check(sample: Sample) -> None:
        """Refuse a sample with an image, naming its row (a command calls this before it loads the model)."""
        if sample.image is not None:
            raise DatasetError(f"{sample.where}: an image cannot be shown in raw text; read the data without it")

    def render(self, sample: Sample) -> str:
        self.check(sample)
        text = sample.prompt if sample.system is None else f"{sample.system}\n\n{sample.prompt}"
        return text if sample.response is None else f"{text} {sample.response}"


def messages(sample: Sample, *, with_image: bool) -> list[dict[str, Any]]:
    """The sample as a chat: the user turn (image first, as LLaVA does) and, if given, the assistant's response."""
    if with_image:
        user = (
            [{"type": "image"}, {"type": "text", "text": sample.prompt}]
            if sample.image
            else [{"type": "text", "text": sample.prompt}]
        )
    else:
        user = sample.prompt
    chat = [{"role": "user", "content": user}]
    if sample.system is not None:
        system = [{"type": "text", "text": sample.system}] if with_image else sample.system
        chat.insert(0, {"role": "system", "content": system})
    if sample.response is not None:
        assistant = [{"type": "text", "text": sample.response}] if with_image else sample.response
        chat.append({"role": "assistant", "content": assistant})
    return chat


def render(sample: Sample, processor) -> str:
    """The prompt text the model sees; a generation prompt follows when the sample has no response."""
    if isinstance(processor, RawText):
        return processor.render(sample)
    multimodal = hasattr(processor, "image_processor")
    if not getattr(processor, "chat_template", None):
        raise DatasetError(
            f"the checkpoint's {'processor' if multimodal else 'tokenizer'} has no chat template; "
            f"add one to its files (chat_template.jinja) to encode sample {sample.id!r}"
        )
    return processor.apply_chat_template(
        messages(sample, with_image=multimodal), tokenize=False, add_generation_prompt=sample.response is None
    )


class _EncodedMemo:
    """Encoded samples by what they render from (processor, prompt, response, system turn, image file and its
    size and time), least recently used dropped past `max_bytes`. An evaluation encodes the same prompts for
    every configuration, its answers' likelihoods and its options; on a small model the processor's Python
    (template, image resizing) costs more than the model. Arrays come back read-only, in a new dict."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: collections.OrderedDict[tuple, tuple[Any, dict[str, np.ndarray], int]] = collections.OrderedDict()

    @staticmethod
    def key(sample: Sample, processor) -> tuple | None:
        rendered = (id(processor), getattr(processor, "chat_template", None), sample.prompt, sample.response)
        if sample.image is None:
            return (*rendered, sample.system, None)
        try:
            stat = os.stat(sample.image)
        except OSError:
            return None  # the reader names the missing file
        return (*rendered, sample.system, os.path.realpath(sample.image), stat.st_mtime_ns, stat.st_size)

    def get(self, key: tuple, processor) -> dict[str, np.ndarray] | None:
        entry = self.entries.get(key)
        if entry is None or entry[0]() is not processor:  # an id reused by a newer processor
            return None
        self.entries.move_to_end(key)
        return dict(entry[1])

    def put(self, key: tuple, processor, encoded: dict[str, np.ndarray]) -> None:
        for value in encoded.values():
            value.flags.writeable = False
        size = sum(value.nbytes for value in encoded.values())
        if key in self.entries:
            self.bytes -= self.entries.pop(key)[2]
        self.entries[key] = (weakref.ref(processor), dict(encoded), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1][2]


_MEMO = _EncodedMemo(max_bytes=1 << 30)


def encode(sample: Sample, processor, image: Image.Image | None = None) -> dict[str, np.ndarray]:
    """`input_ids` `[tokens]` and, with an image, the processor's image inputs for one sample (`pixel_values`,
    and whatever else the family's processor returns with it, such as `image_grid_thw`). Read-only arrays.

    `image` replaces the sample's image file with a picture in memory (a defense's altered view of it)."""
    key = None if image is not None else _MEMO.key(sample, processor)
    cached = None if key is None else _MEMO.get(key, processor)
    if cached is not None:
        return cached
    encoded = _encode(sample, processor, image)
    if key is not None:
        _MEMO.put(key, processor, encoded)
    return encoded


def _encode(sample: Sample, processor, image: Image.Image | None) -> dict[str, np.ndarray]:
    text = render(sample, processor)
    if sample.image is None:
        tokenizer = getattr(processor, "tokenizer", processor)
        return {"input_ids": np.asarray(tokenizer(text, return_tensors="np")["input_ids"][0], np.int32)}
    if not hasattr(processor, "image_processor"):
        raise DatasetError(f"sample {sample.id!r} has an image but the model has no image processor")
    if image is None:
        try:
            image = load_rgb(sample.image)
        except ImageError as err:
            raise ImageError(f"{sample.where}: {err}") from None
    out = processor(images=[image], text=[text], return_tensors="np")
    ids = np.asarray(out["input_ids"])
    # The image inputs as the processor names them; per-token outputs (the mask, token types, Mllama's cross
    # mask `[1, tokens, ...]`) are the batch's to rebuild after padding.
    images = {key: np.asarray(value) for key, value in out.items() if np.shape(value)[:2] != ids.shape}
    if "pixel_values" in images:
        images["pixel_values"] = images["pixel_values"].astype(np.float32)
    return {"input_ids": ids[0].astype(np.int32), **images}
