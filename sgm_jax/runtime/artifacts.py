"""The kinds of file sgm_jax writes, and the check that lets each loader refuse another kind in the user's words.

Scores and intervention files are safetensors whose header names their kind under `KIND_KEY`;
a response store's manifest.json names it under "kind". Files written before the kind was
recorded are told apart by the metadata they always had.
"""

from __future__ import annotations

import json
import os
import shlex

from safetensors import SafetensorError, safe_open

from sgm_jax.runtime.errors import MissingFileError

SCORES, INTERVENTION, RESPONSES = "scores", "intervention", "responses"
DICTIONARY, SAE, ANNOTATION, TOKENS = "dictionary", "sae", "annotation", "tokens"
EXPERTS = "experts"
DIRECTION = "direction"
KIND_KEY = "sgm_jax.kind"

NOUNS = {
    SCORES: "scores file",
    INTERVENTION: "intervention file",
    RESPONSES: "response store",
    DICTIONARY: "concept dictionary",
    SAE: "sparse autoencoder file",
    ANNOTATION: "atom annotation",
    TOKENS: "token activation store",
    EXPERTS: "expert attribution",
    DIRECTION: "refusal direction",
}
_DESCRIPTIONS = {
    SCORES: "an sgm_jax scores file (AUROC per neuron)",
    INTERVENTION: "an sgm_jax intervention file (alpha per neuron)",
    RESPONSES: "an sgm_jax response store (pooled activations per sample)",
    DICTIONARY: "an sgm_jax concept dictionary (one atom per concept)",
    SAE: "an sgm_jax sparse autoencoder",
    ANNOTATION: "an sgm_jax atom annotation (labels of an SAE's atoms)",
    TOKENS: "an sgm_jax token activation store (activations per token)",
    EXPERTS: "an sgm_jax expert attribution (which modality each expert neuron reads)",
    DIRECTION: "an sgm_jax refusal direction (a residual-stream direction and its candidates' scores)",
}
_HINTS = {
    DICTIONARY: "build one with `sgm-jax dictionary`",
    SAE: "train one with `sgm-jax sae train`",
    ANNOTATION: "make one with `sgm-jax sae annotate`",
    TOKENS: "`sgm-jax sae train` collects one with --data",
    EXPERTS: "make one with `sgm-jax experts`",
    DIRECTION: "find one with `sgm-jax refusal-direction`",
}
# Header keys of files written before KIND_KEY, most specific first.
_LEGACY_KEYS = (("sgm_jax.intervention", INTERVENTION), ("sgm_jax", SCORES))
_LEGACY_STORE_FORMAT = "sgm_jax.responses/"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _identify(path: str) -> tuple[str | None, str]:
    """`(kind, description)` of what `path` holds; kind is None for anything sgm_jax did not write."""
    if os.path.isdir(path):
        manifest = os.path.join(path, "manifest.json")
        if not os.path.exists(manifest):
            return None, "a directory with no manifest.json"
        try:
            with open(manifest) as f:
                data = json.load(f)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return None, "a directory whose manifest.json is not a JSON object"
        if data.get("kind") == RESPONSES or str(data.get("format", "")).startswith(_LEGACY_STORE_FORMAT):
            return RESPONSES, _DESCRIPTIONS[RESPONSES]
        if data.get("kind") == TOKENS:
            return TOKENS, _DESCRIPTIONS[TOKENS]
        return None, f"a directory whose manifest.json has format {data.get('format')!r}"
    try:
        with safe_open(path, "numpy") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError):
        return None, "a file that is not safetensors"
    kind = header.get(KIND_KEY) or next((k for key, k in _LEGACY_KEYS if key in header), None)
    if kind is None:
        return None, "a safetensors file with no sgm_jax metadata (model weights?)"
    return kind, _DESCRIPTIONS.get(kind, f"an sgm_jax {kind!r} file, a kind this version does not know")


def file_kind(path: str) -> str | None:
    """The kind of sgm_jax artifact at `path` (SCORES, INTERVENTION, RESPONSES, DICTIONARY, ...), None for others."""
    return _identify(path)[0]


def _hint(path: str, found: str | None, wanted: str) -> str:
    quoted = shlex.quote(path)
    if wanted in _HINTS:
        return _HINTS[wanted]
    if wanted == INTERVENTION:
        return (
            f"build one with `sgm-jax intervention --scores {quoted}`"
            if found == SCORES
            else "build one from a scores file with `sgm-jax intervention --scores FILE`"
        )
    if wanted == SCORES:
        return (
            f"score it with `sgm-jax score --store {quoted}`"
            if found == RESPONSES
            else "write one from a response store with `sgm-jax score --store DIR`"
        )
    return "collect one with `sgm-jax collect --model MODEL --data DATA --out DIR`"


def check_kind(path: str, wanted: str, error: type[Exception] = ValueError) -> None:
    """Raise `error` unless `path` holds an artifact of kind `wanted`, naming what it holds and how to get the
    right one: a scores file and an intervention file look alike (safetensors, one vector per site)."""
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: no such {NOUNS[wanted]}")
    found, description = _identify(path)
    if found != wanted:
        raise error(f"{path} is {description}, not {_a(NOUNS[wanted])}: {_hint(path, found, wanted)}")
