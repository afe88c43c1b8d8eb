"""A sweep on disk: settings measured a chunk at a time, each one's row kept as soon as it is measured, then the
table and the Pareto plot.

Layout of a sweep folder:
  settings.jsonl   first line: what the rows were measured with (model, scores, data, judge, options); then one
                   row per measured setting (its key, knobs, metrics), appended and flushed chunk by chunk
  sweep.csv        one row per setting of the grid, in grid order, with its metrics and whether it is on a front
  pareto.png       harmful rate against reasoning and against perplexity, the fronts marked
  sweep.json       the summary: fronts, the paper's settings, timings (settings/s, compiles)

A rerun of the same command measures only the settings without a row (a killed run loses at most the chunk in
flight, never a row, and counts none twice); a folder made with other model, scores, data or options is
refused. Over several processes each takes whole chunks in turn and process 0 writes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sgm_jax.data.samples import Sample, dataset_hash
from sgm_jax.judges import Judge
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.sites import site_refs
from sgm_jax.runtime import distributed
from sgm_jax.runtime.atomic import atomic_write, jsonl_appender, read_jsonl_log, write_json
from sgm_jax.runtime.compiles import count_compiles
from sgm_jax.runtime.errors import OptionError, SgmJaxError
from sgm_jax.runtime.locks import writer_lock
from sgm_jax.sweeps.evaluation import METRICS, SettingsEvaluator, SweepOptions
from sgm_jax.sweeps.pareto import PANELS, pareto_front, plot_pareto
from sgm_jax.sweeps.settings import Setting, intervention_for

RESULTS = "settings.jsonl"
# sweep.csv: the setting and its headline metrics first, then the rest of what was measured.
_LEADING = (
    "method",
    "threshold",
    "strength",
    "k",
    "sites",
    "harmful_rate",
    "over_refusal",
    "mcq_accuracy",
    "perplexity",
)
COLUMNS = (
    *_LEADING,
    *(name for name in (*(f.name for f in dataclasses.fields(Setting)), *METRICS) if name not in _LEADING),
    "neurons_changed",
    "front_mcq",
    "front_perplexity",
)
# The paper's settings, ringed on the plot when the grid holds them.
PAPER_SETTINGS = {
    Setting("aura", "sgm", threshold=0.5).key: "AurA (0.5)",
    Setting("aura", "sgm", threshold=0.3).key: "SGM release (0.3)",
}


class SweepError(SgmJaxError, ValueError):
    """A sweep folder that holds rows measured with something else."""


def run_sweep(
    model,
    processor,
    samples: Sequence[Sample],
    neutral: Sequence[str],
    judge: Judge,
    scores: Mapping[str, np.ndarray],
    settings: Sequence[Setting],
    groups: Mapping[str, list[str]],
    out_dir: str,
    *,
    options: SweepOptions | None = None,
    source: dict | None = None,
    progress: bool = True,
    info: dict | None = None,
) -> dict[str, Any]:
    """Measure every setting not yet in `out_dir`, then write sweep.csv, pareto.png and sweep.json there."""
    options = options or SweepOptions()
    keys = [s.key for s in settings]
    if len(set(keys)) != len(keys):
        raise OptionError("the sweep lists a setting twice")
    if not settings:
        raise OptionError("the sweep has no settings")
    used = {s.sites for s in settings}
    missing = sorted(used - set(groups))
    if missing:
        raise OptionError(f"settings name site groups {missing}, which are not defined ({sorted(groups)})")
    unscored = sorted({site for g in used for site in groups[g]} - set(scores))
    if unscored:
        raise OptionError(f"site groups hold sites without scores: {unscored[:3]}")
    touched = {site for g in used for site in groups[g]}
    sites = [s for s in site_refs(model) if s in touched]
    evaluator = SettingsEvaluator(model, processor, samples, neutral, judge, sites=sites, options=options)
    identity = {
        "model_fingerprint": model_fingerprint(model),
        "scores": _scores_digest(scores),
        "data": dataset_hash(samples),
        "neutral": hashlib.sha256("\n".join(neutral).encode()).hexdigest(),
        "judge": judge.name,
        "max_new_tokens": options.max_new_tokens,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "n_boot": options.n_boot,
    }
    group = distributed.cluster()
    path = os.path.join(out_dir, RESULTS)
    lock = writer_lock(out_dir, "sweep folder") if group.writer else contextlib.nullcontext()
    with lock:
        done = distributed.broadcast_json(_read_rows(path, identity) if group.writer else None)
        todo = [s for s in settings if s.key not in done]
        size = options.chunk_size
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]

        def measure(chunk: list[Setting]) -> list[dict[str, Any]]:
            ivs = [intervention_for(s, scores, groups, source) for s in chunk]
            with distributed.solo():  # the chunk is this process's alone, its likelihood batches too
                metrics = evaluator.measure(ivs)
            return [
                {"key": s.key, "setting": s.row(), "metrics": m, "neurons_changed": iv.num_changed()}
                for s, iv, m in zip(chunk, ivs, metrics)
            ]

        started = time.perf_counter()
        bar = tqdm(total=len(settings), initial=len(done), desc="sweep", unit="setting", disable=not progress)
        with count_compiles() as compiles, jsonl_appender(path, {"identity": identity}, write=group.writer) as append:
            for results in distributed.rounds(chunks, measure):
                for _, rows in results:
                    append(rows)
                    done.update({row["key"]: row for row in rows})
                    bar.update(len(rows))
        bar.close()
        seconds = time.perf_counter() - started
        rows = [{**done[s.key], "key": s.key} for s in settings]
        summary = _summary(rows, len(todo), seconds, compiles.count, options, info)
        if group.writer:
            _write_table(os.path.join(out_dir, "sweep.csv"), rows, summary)
            plot_pareto(
                os.path.join(out_dir, "pareto.png"),
                [_flat(r) for r in rows],
                highlights={k: v for k, v in PAPER_SETTINGS.items() if k in done},
                title=(info or {}).get("title", "sweep"),
            )
            write_json(os.path.join(out_dir, "sweep.json"), summary)
        return summary


def _scores_digest(scores: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for site in sorted(scores):
        digest.update(site.encode())
        digest.update(np.ascontiguousarray(scores[site], np.float32).tobytes())
    return digest.hexdigest()


def _read_rows(path: str, identity: dict) -> dict[str, dict]:
    """The rows already measured, by key (a torn last line is ignored); refuses another sweep's folder."""
    header, lines = read_jsonl_log(
        path, lambda: SweepError(f"sweep results {path}: its first line (what they were measured with) is damaged")
    )
    if header is None:
        return {}
    found = header.get("identity", {}) if isinstance(header, dict) else {}
    if found != json.loads(json.dumps(identity)):
        changed = sorted(k for k in identity if found.get(k) != identity[k])
        raise SweepError(
            f"sweep folder {os.path.dirname(path)} holds rows measured with other {', '.join(changed)}; "
            "use another --out (or remove it)"
        )
    return {row["key"]: row for row in lines}


def _flat(row: dict) -> dict[str, Any]:
    return {"key": row["key"], **row["setting"], **row["metrics"], "neurons_changed": row["neurons_changed"]}


def _summary(rows, measured: int, seconds: float, compiles: int, options: SweepOptions, info) -> dict[str, Any]:
    flat = [_flat(r) for r in rows]
    fronts = {}
    for x_name, y_name, maximize, *_ in PANELS:
        mask = pareto_front(
            [r[x_name] for r in _nan(flat, x_name)], [r[y_name] for r in _nan(flat, y_name)], maximize_y=maximize
        )
        front = sorted((flat[i] for i in np.flatnonzero(mask)), key=lambda r: r[x_name])
        fronts[y_name] = [{k: r[k] for k in ("key", x_name, y_name)} for r in front]
    return {
        "info": info or {},
        "settings": len(rows),
        "measured_now": measured,
        "seconds": seconds,
        "settings_per_s": measured / seconds if measured and seconds > 0 else None,
        "compiles": compiles,
        "options": {k: getattr(options, k) for k in ("max_new_tokens", "batch_size", "chunk_size", "n_boot", "seed")},
        "fronts": fronts,
        "paper": {label: next((r for r in flat if r["key"] == key), None) for key, label in PAPER_SETTINGS.items()},
    }


def _nan(rows, name):
    return [{**r, name: float("nan") if r.get(name) is None else r[name]} for r in rows]


def _write_table(path: str, rows, summary) -> None:
    on = {name: {r["key"] for r in front} for name, front in summary["fronts"].items()}

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            out = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            out.writeheader()
            for row in rows:
                flat = _flat(row)
                flat["front_mcq"] = int(row["key"] in on["mcq_accuracy"])
                flat["front_perplexity"] = int(row["key"] in on["perplexity"])
                out.writerow({k: "" if flat.get(k) is None else flat[k] for k in COLUMNS})

    atomic_write(path, write)
