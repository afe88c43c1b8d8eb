"""`load_model`: a local HF directory (or a hub id already in the HF cache) -> (NNX model, processor)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.config import UnsupportedConfigError
from sgm_jax.models.registry import family
from sgm_jax.runtime import compile_cache
from sgm_jax.runtime.choices import DTYPE_NAMES
from sgm_jax.runtime.errors import CheckpointError, MissingFileError
from sgm_jax.weights import sharding
from sgm_jax.weights.convert import load_into

DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}

_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve_checkpoint(path: str) -> str:
    """A local directory as is, or the cached snapshot of a hub id; never downloads."""
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=True)
    except Exception as err:
        raise MissingFileError(
            f"{path!r} is neither a local directory nor a hub id in the local Hugging Face cache "
            f"(sgm_jax never downloads: fetch it first with `hf download {path}`)"
        ) from err


def read_config(directory: str) -> dict[str, Any]:
    """The checkpoint's config as transformers resolves it (defaults filled, legacy fields renamed)."""
    from transformers import AutoConfig

    if not os.path.exists(os.path.join(directory, "config.json")):
        raise MissingFileError(f"{directory}: no config.json")
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except Exception as err:  # transformers raises several types (ValueError, strict-dataclass errors, KeyError)
        raise UnsupportedConfigError(f"{directory}/config.json is rejected by transformers: {err}") from err
    return config.to_dict()


def load_processor(directory: str, model_class: type[CausalLM] | None = None):
    """The directory's processor (images + text) or tokenizer, or None where it has no tokenizer files.

    Without a tokenizer there is no processor at all (transformers cannot build one), so a checkpoint whose folder
    holds only image-processor files still loads for what needs no text (its sites); `require_tokenizer` refuses
    it where text is encoded. A family may name its own processor class (`CausalLM.processor_class`) where
    `AutoProcessor` would need more than the family uses (Qwen2-VL's video processor, which needs torchvision).
    """
    from transformers import AutoProcessor, AutoTokenizer

    names = set(os.listdir(directory))
    if not names.intersection(_TOKENIZER_FILES):
        return None
    if names.intersection(_PROCESSOR_FILES):
        cls = (model_class and model_class.processor_class()) or AutoProcessor
        return cls.from_pretrained(directory, trust_remote_code=False)
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def require_tokenizer(path: str) -> None:
    """Refuse, before anything loads, a checkpoint without tokenizer files (for what encodes text), naming the
    files looked for and where."""
    directory = resolve_checkpoint(path)
    if not set(os.listdir(directory)).intersection(_TOKENIZER_FILES):
        raise MissingFileError(
            f"{directory}: no tokenizer files (looked for {', '.join(_TOKENIZER_FILES)}), so text cannot be encoded"
        )


def build_model(config: dict[str, Any], *, dtype="float32", rngs: nnx.Rngs | None = None):
    """A randomly initialised model for an HF config dict (training from scratch, abstract shapes)."""
    cls = family(config.get("model_type"))
    return cls(cls.spec_class.from_hf(config), dtype=_dtype(dtype), rngs=rngs or nnx.Rngs(0))


def _dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise CheckpointError(f"dtype={dtype!r} is not supported (supported: {sorted(DTYPES)})")
        return DTYPES[dtype]
    return dtype


def load_model(
    path: str,
    *,
    dtype="float32",
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    warm: Callable[[CausalLM, Any], None] | None = None,
):
    """Load an HF checkpoint as `(model, processor)`; with `mesh`, each tensor goes straight to its shards. Turns on
    the persistent compilation cache (`sgm_jax.runtime.compile_cache`) unless it is off.

    `warm(model, processor)` runs while the weights load, on a model of abstract arrays placed as the weights will
    be: a command compiles there, ahead of time, the programs it will run (`sgm_jax.responses.collect.warm_capture`,
    `sgm_jax.evaluate.answers.warm_answers`), and jax hands them to its real calls: from memory when the abstract
    model is the loaded one's exact signature, else from the persistent compile cache. On a TPU a 7B program
    compiles in about a minute, as long as its checkpoint takes to read. With the compile cache off `warm` is
    skipped: a program the memory did not match would compile twice.
    """
    cache = compile_cache.enable()
    directory = resolve_checkpoint(path)
    config = read_config(directory)
    model = nnx.eval_shape(lambda: build_model(config, dtype=dtype))
    model.special_tokens, model.max_positions = special_tokens(directory), max_positions(config)
    processor = load_processor(directory, type(model))
    warming = None
    if warm is not None and cache is not None:
        shapes = nnx.eval_shape(lambda: build_model(config, dtype=dtype))  # its own: loading fills `model`
        shapes.special_tokens, shapes.max_positions = model.special_tokens, model.max_positions
        shapes = shapes if mesh is None else sharding.abstract_placed(shapes, mesh, rules)
        warming = threading.Thread(target=_warm_quietly, args=(warm, shapes, processor), daemon=True)
        warming.start()
    place = None
    if mesh is not None:
        place = lambda array, variable: jax.device_put(array, sharding.variable_sharding(variable, mesh, rules))
    load_into(model, directory, type(model).load_layout, dtype=_dtype(dtype), place=place)
    if warming is not None:
        warming.join()
    return model, processor


def _warm_quietly(warm, shapes: CausalLM, processor) -> None:
    """`warm`, whose failure loses nothing but time: the command meets the same error, with its own message, when
    it runs the program for real."""
    try:
        warm(shapes, processor)
    except Exception:  # noqa: BLE001 - see the docstring
        pass


def max_positions(config: dict[str, Any]) -> int | None:
    """`max_position_embeddings` of the config's text model (a multimodal config's `text_config`, else its own)."""
    value = (config.get("text_config") or config).get("max_position_embeddings")
    return None if value is None else int(value)


def special_tokens(directory: str) -> tuple[tuple[str, Any], ...]:
    """EOS and pad ids as transformers' `generate` finds them: generation_config.json, else config.json.

    A tuple of pairs (hashable, so it can sit in the model's static structure); read by `sgm_jax.generate`.
    """
    from transformers import AutoConfig, GenerationConfig

    if os.path.exists(os.path.join(directory, "generation_config.json")):
        generation = GenerationConfig.from_pretrained(directory)
    else:
        generation = GenerationConfig.from_model_config(AutoConfig.from_pretrained(directory, trust_remote_code=False))
    eos = generation.eos_token_id
    eos = None if eos is None else (int(eos),) if isinstance(eos, int) else tuple(int(i) for i in eos)
    pad = generation.pad_token_id
    return (("eos_token_id", eos), ("pad_token_id", None if pad is None else int(pad)))
