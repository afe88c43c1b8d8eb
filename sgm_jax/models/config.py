"""Strict reading of Hugging Face config dicts.

Every field that transformers' config class defines is either read by the
port, known to be inert at inference (metadata, generation defaults, dropout),
or an error that names it: a checkpoint whose config asks for behaviour the port
lacks must not load and then compute something else. Fields the class does not
define (legacy hub fields such as `is_llama_config`) are ignored by transformers
and so by us.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable
from typing import Any

from sgm_jax.runtime.errors import SgmJaxError

# Fields every `PretrainedConfig` carries (5.x) plus the generation and
# bookkeeping fields that 4.x configs stored; none changes a forward pass.
GENERIC_INERT = frozenset(
    {
        "_name_or_path",
        "architectures",
        "transformers_version",
        "model_type",
        "dtype",
        "torch_dtype",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
        "initializer_range",
        "initializer_factor",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "max_position_embeddings",
        "attention_dropout",
        "hidden_dropout",
        "bad_words_ids",
        "begin_suppress_tokens",
        "diversity_penalty",
        "do_sample",
        "early_stopping",
        "encoder_no_repeat_ngram_size",
        "exponential_decay_length_penalty",
        "finetuning_task",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "length_penalty",
        "max_length",
        "min_length",
        "no_repeat_ngram_size",
        "num_beam_groups",
        "num_beams",
        "num_return_sequences",
        "output_scores",
        "prefix",
        "remove_invalid_values",
        "repetition_penalty",
        "return_dict_in_generate",
        "suppress_tokens",
        "task_specific_params",
        "temperature",
        "tf_legacy_loss",
        "tie_encoder_decoder",
        "tokenizer_class",
        "top_k",
        "top_p",
        "typical_p",
        "use_bfloat16",
        "torchscript",
        "is_decoder",
        "cross_attention_hidden_size",
    }
)

# Attributes transformers' shared code (masking, generation, attention setup) reads from any config with
# `getattr`, whether or not the model's config class defines them: they change the computation unless
# they hold their default.
_READ_BY_SHARED_CODE = {
    "pruned_heads": ({}, None),
    "add_cross_attention": (False, None),
    "sliding_window": (None,),
    "layer_types": (None,),
    "attention_chunk_size": (None,),
    "is_causal": (True, None),
}

log = logging.getLogger(__name__)


class UnsupportedConfigError(SgmJaxError, ValueError):
    """The checkpoint's config asks for something this port does not implement."""


@functools.cache
def reference_fields(model_type: str) -> frozenset[str]:
    """The fields transformers' config class for `model_type` defines (so its modeling code may act on them)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    return frozenset({f.name for f in dataclasses.fields(cls)} | set(cls.attribute_map) | set(cls.sub_configs))


def check_fields(cfg: dict[str, Any], *, where: str, used: Iterable[str], inert: Iterable[str] = ()) -> None:
    """Raise if `cfg` asks for behaviour the port lacks: a field the reference config class defines that is
    neither used nor inert, or a shared-code attribute away from its default. Fields the reference class
    does not define are ignored by transformers, so they are accepted (and logged at debug level)."""
    known = set(used) | set(inert) | GENERIC_INERT
    defined = reference_fields(cfg["model_type"])
    problems = [
        f"{k}={cfg[k]!r} (must be one of {list(v)})"
        for k, v in _READ_BY_SHARED_CODE.items()
        if k in cfg and cfg[k] not in v
    ]
    problems += [
        f"{k}={cfg[k]!r}" for k in sorted(cfg) if k in defined and k not in known and k not in _READ_BY_SHARED_CODE
    ]
    ignored = sorted(k for k in cfg if k not in defined and k not in known and k not in _READ_BY_SHARED_CODE)
    if ignored:
        log.debug("%s: fields transformers does not define, so ignores (and so does sgm_jax): %s", where, ignored)
    if problems:
        raise UnsupportedConfigError(f"{where}: config fields sgm_jax does not implement: {', '.join(problems)}")


def require(where: str, field: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return `value` if it is one of `allowed`, else name the field and the supported values."""
    allowed = list(allowed)
    if value not in allowed:
        raise UnsupportedConfigError(f"{where}: {field}={value!r} is not supported (supported: {allowed})")
    return value
