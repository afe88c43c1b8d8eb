"""Generated answers, batched and cached on disk so an interrupted evaluation resumes.

The cache is a JSONL file, one line per answered sample, appended and flushed batch by
batch. A killed run leaves at most a torn last line, which is ignored; answers are
keyed by sample id, so a resumed run neither loses nor repeats one. Each line also holds
a digest of what the model saw (the rendered prompt and the image's bytes): a sample whose
prompt or image changed is answered again, never served its old answer. The first line
records the generation settings, and a cache made with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence

from flax import nnx
from tqdm.auto import tqdm

from sgm_jax.data.encode import SquareImages, render
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.answering import answer_arguments
from sgm_jax.decoding.generate import decode
from sgm_jax.decoding.lengths import run_length
from sgm_jax.defenses import Defense, answer_batch, by_stage
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.runtime import distributed
from sgm_jax.runtime.atomic import atomic_write, jsonl_appender, read_jsonl_log
from sgm_jax.runtime.compile_cache import user_cache
from sgm_jax.runtime.errors import CacheError


def answer_key(sample: Sample, processor) -> str:
    """A digest of what determines `sample`'s answer besides the settings: its prompt as the model sees it (the
    rendered chat, without the reference response) and its image file's bytes."""
    digest = hashlib.sha256(render(dataclasses.replace(sample, response=None), processor).encode("utf-8"))
    if sample.image is not None:
        with open(sample.image, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _read_cache(path: str, settings: dict) -> dict[str, tuple[str | None, str]]:
    """`{sample id: (answer key, answer)}`; the last line for an id wins."""
    header, rows = read_jsonl_log(
        path, lambda: CacheError(f"answer cache {path}: its first line (the settings) is damaged; remove the file")
    )
    if header is None:
        return {}
    if not isinstance(header, dict) or header.get("settings") != settings:
        found = header.get("settings") if isinstance(header, dict) else header
        raise CacheError(
            f"answer cache {path} was made with other settings ({found}), not {settings}; remove it or use "
            "another output directory"
        )
    return {row["id"]: (row.get("key"), row["answer"]) for row in rows}


def generate_answers(
    model: nnx.Module,
    processor,
    samples: Sequence[Sample],
    *,
    cache_path: str,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    defenses: Sequence[Defense] = (),
    base: nnx.Module | None = None,
) -> dict[str, str]:
    """`{sample id: decoded answer}`, generating only what the cache at `cache_path` does not hold yet.

    `defenses` stack on `model` (see `sgm_jax.defenses`); `base` is the model without the intervention, which
    verdict sources and the prober gate read (default: `model`). In a job over several processes the batches are
    shared out, every process gets every answer, and process 0 alone writes the cache."""
    base = model if base is None else base
    settings = {
        "model_fingerprint": model_fingerprint(model),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "image_size": processor.image_size if isinstance(processor, SquareImages) else None,
    }
    if defenses:
        by_stage(defenses)
        settings["defenses"] = [d.describe() for d in defenses]
        settings["base_fingerprint"] = model_fingerprint(base)
    settings = json.loads(json.dumps(settings))  # as the cache's header reads back (tuples become lists)
    writer = distributed.cluster().writer
    keys = {s.id: answer_key(s, processor) for s in samples}
    cached = distributed.broadcast_json(_read_cache(cache_path, settings) if writer else None)
    answers = {i: answer for i, (key, answer) in cached.items() if key == keys.get(i)}
    shared_path = None if defenses else _shared_path(settings)
    shared = distributed.broadcast_json(_read_shared(shared_path, settings) if writer and shared_path else None) or {}
    reused = [
        {
            "id": s.id,
            "key": keys[s.id],
            "answer": shared[keys[s.id]]["answer"],
            "seconds": shared[keys[s.id]]["seconds"],
        }
        for s in samples
        if s.id not in answers and keys[s.id] in shared
    ]
    answers.update({row["id"]: row["answer"] for row in reused})
    todo = [s for s in samples if s.id not in answers]
    order = sorted(todo, key=lambda s: (len(s.prompt), s.id))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    length = run_length(model, processor, samples) if batches else 0  # all samples: a resumed run pads alike

    def answered(batch: list[Sample]) -> dict:
        start = time.perf_counter()
        texts = answer_batch(
            base,
            model,
            processor,
            batch,
            defenses,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            rows=len(batches[0]),
            length=length,
        )
        return {"texts": texts, "seconds": (time.perf_counter() - start) / len(batch)}

    with jsonl_appender(cache_path, {"settings": settings}, write=writer) as append:
        if reused:
            append(reused)  # the output folder holds all its answers, wherever they came from
        bar = tqdm(total=len(batches), desc="generate", unit="batch", disable=not progress)
        for results in distributed.rounds(batches, answered):
            for position, result in results:
                rows = [
                    {"id": sample.id, "key": keys[sample.id], "answer": text, "seconds": result["seconds"]}
                    for sample, text in zip(batches[position], result["texts"])
                ]
                answers.update({row["id"]: row["answer"] for row in rows})
                shared.update({row["key"]: row for row in rows})
                append(rows)
                bar.update()
        bar.close()
    if writer and shared_path is not None and batches:
        _write_shared(shared_path, settings, shared)
    return {s.id: answers[s.id] for s in samples}


SHARED_ENV = "SGM_JAX_ANSWER_CACHE"


def shared_directory() -> str | None:
    """Where the answers of configurations without defenses are kept for every output folder (a baseline, the
    same intervention): `$SGM_JAX_ANSWER_CACHE`, else the user's cache folder (`~/.cache/sgm_jax/answers`); `off`
    keeps answers in each output folder only. One file per settings (model fingerprint, decoding, image size),
    its rows keyed by the prompt's content (`answer_key`), so another dataset or folder reuses what matches."""
    chosen = os.environ.get(SHARED_ENV)
    if chosen == "off":
        return None
    return os.path.abspath(os.path.expanduser(chosen)) if chosen else user_cache("answers")


def _shared_path(settings: dict) -> str | None:
    directory = shared_directory()
    if directory is None:
        return None
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:32]
    return os.path.join(directory, f"{digest}.jsonl")


def _read_shared(path: str, settings: dict) -> dict[str, dict]:
    """`{answer key: row}` of a shared answers file; a missing, damaged or foreign one is empty (it only saves
    time, and is written whole again after the run)."""
    try:
        header, rows = read_jsonl_log(path, lambda: CacheError(path))
    except (CacheError, OSError):
        return {}
    if not isinstance(header, dict) or header.get("settings") != settings:
        return {}
    return {row["key"]: row for row in rows if isinstance(row, dict) and {"key", "answer", "seconds"} <= set(row)}


def _write_shared(path: str, settings: dict, rows: dict[str, dict]) -> None:
    """The shared answers file, written whole and atomically (two runs at once leave one complete file); a folder
    that cannot be written costs the reuse, never the run."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"settings": settings}) + "\n")
            for row in rows.values():
                f.write(json.dumps({k: row[k] for k in ("key", "answer", "seconds")}) + "\n")

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, write)
    except OSError:
        pass


def warm_answers(
    models: Sequence[nnx.Module],
    processor,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
) -> None:
    """Compile, ahead of time, the generate program `generate_answers` runs on `samples` for each of `models`
    (abstract ones too: `sgm_jax.load_model(warm=...)`): one per model, at the run's one prompt length and batch
    rows, for the compile cache to hand over. Defenses that rewrite prompts or decode their own way are not warmed."""
    open_ended = sorted((s for s in samples if not s.options), key=lambda s: (len(s.prompt), s.id))
    if not open_ended or not models:
        return
    first = open_ended[:batch_size]
    length = run_length(models[0], processor, open_ended)
    decoding = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    for model in models:
        args, static = answer_arguments(model, processor, first, **decoding, rows=len(first), length=length)
        decode.trace(model, *args, **static).lower().compile()


def answer_seconds(cache_path: str, ids) -> float:
    """Generation wall time of the answers `ids` in a cache (each row holds its share of its batch's time;
    rows written before this was recorded count 0)."""
    wanted, seconds = set(ids), {}
    if not os.path.exists(cache_path):
        return 0.0
    with open(cache_path, encoding="utf-8") as f:
        for line in f.read().split("\n")[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("id") in wanted:
                seconds[row["id"]] = float(row.get("seconds", 0.0))
    return sum(seconds.values())
