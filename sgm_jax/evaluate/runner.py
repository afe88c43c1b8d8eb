"""One evaluation: the model before and after an intervention, on harmful, benign and multiple-choice items.

SGM's claim is three numbers measured together — harmful rate down, fluency kept,
multimodal reasoning kept — so every run measures all three for both settings:
- harmful rate of generated answers to harmful items (label 1), overall, per category
  and per condition, with bootstrap 95% intervals; over-refusal on benign items (label 0);
- fluency: perplexity on a neutral text set, perplexity of the answers under the model
  without the intervention, and distinct-2;
- multimodal reasoning: multiple-choice accuracy by option log-likelihood.
Answers are cached per setting, so an interrupted run resumes without regenerating.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from sgm_jax.data.samples import Sample, require_labels
from sgm_jax.decoding.lengths import check_lengths, estimated_lengths
from sgm_jax.defenses import Defense, by_stage
from sgm_jax.defenses.compose import steered
from sgm_jax.evaluate.answers import answer_seconds, generate_answers
from sgm_jax.evaluate.likelihood import Scored, response_scores, text_scores
from sgm_jax.evaluate.mcq import mcq_accuracy
from sgm_jax.evaluate.metrics import answer_metrics
from sgm_jax.evaluate.report import write_report
from sgm_jax.interventions import Intervention, intervene
from sgm_jax.judges import Judge
from sgm_jax.runtime import distributed
from sgm_jax.runtime.atomic import write_json
from sgm_jax.runtime.errors import CheckpointError, OptionError
from sgm_jax.runtime.locks import writer_lock


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    max_new_tokens: int = 32
    batch_size: int = 8
    temperature: float = 0.0
    seed: int = 0
    circular: bool = False
    n_boot: int = 1000
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One measured setting: whether the run's intervention applies, and the defenses stacked on it."""

    name: str
    intervention: bool = False
    defenses: tuple[Defense, ...] = ()
    cache: str | None = None  # the answer cache's name (default: `name`)

    def __post_init__(self):
        by_stage(self.defenses)


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What every setting of one run is measured against: the base model (no intervention; it scores answers and
    routes the prober gate's unflagged rows), the data, the judge, the output folder and the options.

    Settings of one run share `memo`: multiple-choice accuracy and perplexity depend only on the model and the
    prompt-side defenses (a decoder or an outer loop leaves a likelihood as it is), and the answer perplexity only
    on the answer, so each is computed once however many settings need it."""

    base: nnx.Module
    processor: Any
    samples: Sequence[Sample]
    judge: Judge
    neutral: Sequence[str]
    out_dir: str
    options: EvalOptions
    memo: dict = dataclasses.field(default_factory=dict)


def measure_all(
    context: EvalContext, configurations: Sequence[Configuration], intervention: Intervention | None = None
) -> dict[str, dict[str, Any]]:
    """Every configuration's metrics, by name; the intervened model is built once for all that apply it."""
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        raise OptionError(f"configuration names must be unique, got {names}")
    if intervention is None and any(c.intervention for c in configurations):
        wanted = [c.name for c in configurations if c.intervention]
        raise OptionError(f"configurations {wanted} apply an intervention, but none was given (--intervention)")
    gated = intervene(context.base, intervention) if intervention is not None else context.base
    return {
        c.name: measure(context, c.cache or c.name, gated if c.intervention else context.base, c.defenses)
        for c in configurations
    }


def measure(context: EvalContext, name: str, model: nnx.Module, defenses: Sequence[Defense] = ()) -> dict[str, Any]:
    """Every metric of one setting: `model` (the base model, or it with an intervention) answering through
    `defenses`. Answers are cached in `out_dir/answers_{name}.jsonl`."""
    processor, opts, memo = context.processor, context.options, context.memo
    open_ended = [s for s in context.samples if not s.options]
    choice = [s for s in context.samples if s.options]
    metrics: dict[str, Any] = {}
    if open_ended:
        cache_path = os.path.join(context.out_dir, f"answers_{name}.jsonl")
        answers = generate_answers(
            model,
            processor,
            open_ended,
            cache_path=cache_path,
            defenses=defenses,
            base=context.base,
            max_new_tokens=opts.max_new_tokens,
            batch_size=opts.batch_size,
            temperature=opts.temperature,
            seed=opts.seed,
            progress=opts.progress,
        )
        texts = [answers[s.id] for s in open_ended]
        measured, judged = answer_metrics(open_ended, texts, context.judge, n_boot=opts.n_boot, seed=opts.seed)
        metrics.update(measured)
        tokenizer = getattr(processor, "tokenizer", processor)
        seconds = answer_seconds(cache_path, [s.id for s in open_ended])
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        metrics["tokens_per_s"] = tokens / seconds if seconds > 0 else None
        answered = [dataclasses.replace(s, response=answers[s.id]) for s in open_ended if answers[s.id]]
        if answered:
            metrics["answer_perplexity"] = _answer_scores(context, answered).perplexity
        metrics["examples"] = [
            {"id": s.id, "prompt": s.prompt, "answer": answers[s.id], "harmful": v.harmful, "judge": v.detail}
            for s, v in judged[:5]
        ]
    stages = by_stage(defenses)
    steering = json.dumps([d.describe() for d in stages["steer"]])
    if choice:
        key = ("mcq", id(model), steering, json.dumps([d.describe() for d in stages["route"] + stages["prompt"]]))
        if key not in memo:
            memo[key] = _mcq(model, context.base, processor, choice, defenses, opts)
        metrics["mcq_accuracy"] = memo[key]
    if context.neutral:
        key = ("perplexity", id(model), steering)
        if key not in memo:
            tokenizer = getattr(processor, "tokenizer", processor)
            memo[key] = text_scores(
                steered(model, defenses), tokenizer, context.neutral, batch_size=opts.batch_size
            ).perplexity
        metrics["perplexity"] = memo[key]
    return metrics


def _answer_scores(context: EvalContext, answered: Sequence[Sample]) -> Scored:
    """The answers' log-likelihoods under the base model; an answer another setting of the same run gave to the
    same prompt is scored once (in a comparison most configurations answer most prompts alike)."""
    base, memo = context.base, context.memo
    keys = [("answer", id(base), s.id, s.prompt, s.image, s.response) for s in answered]
    todo = [s for s, key in zip(answered, keys) if key not in memo]
    if todo:
        scored = response_scores(base, context.processor, todo, batch_size=context.options.batch_size)
        for s, lp, n in zip(todo, scored.logprob, scored.tokens):
            memo[("answer", id(base), s.id, s.prompt, s.image, s.response)] = (lp, n)
    return Scored(np.asarray([memo[k][0] for k in keys]), np.asarray([memo[k][1] for k in keys]))


def _mcq(model, base, processor, samples: Sequence[Sample], defenses: Sequence[Defense], opts: EvalOptions) -> float:
    """Option log-likelihood accuracy with the steering, the prompt shields and the prober gate's routing;
    decoding and outer-loop defenses do not change a likelihood, so they leave it as the model's."""
    stages = by_stage(defenses)
    routed = stages["route"] and model is not base
    model = steered(model, defenses)
    for shield in stages["prompt"]:
        samples = [shield.transform(s, processor) for s in samples]
    groups = [(model, list(samples))]
    if routed:
        flags = np.asarray(stages["route"][0].flags(base, processor, samples), bool)
        groups = [
            (model, [s for s, f in zip(samples, flags) if f]),
            (base, [s for s, f in zip(samples, flags) if not f]),
        ]
    correct = 0.0
    for target, rows in groups:
        if rows:
            correct += (
                len(rows)
                * mcq_accuracy(target, processor, rows, circular=opts.circular, batch_size=opts.batch_size).accuracy
            )
    return correct / len(samples)


def evaluate(
    model: nnx.Module,
    processor,
    samples: Sequence[Sample],
    *,
    judge: Judge,
    out_dir: str,
    intervention: Intervention | None = None,
    neutral_texts: Sequence[str] = (),
    scores: dict[str, np.ndarray] | None = None,
    options: EvalOptions = EvalOptions(),
    info: dict[str, Any] | None = None,
    defenses: Sequence[Defense] = (),
) -> dict[str, Any]:
    """Measure `model` before and after `intervention` (with `defenses` stacked on it, after): a comparison of the
    two configurations "before" and "after"; write results.json, report.md and plots to `out_dir`."""
    if processor is None:
        raise CheckpointError("evaluation needs the checkpoint's tokenizer/processor files")
    require_labels(samples, "evaluation")
    open_ended = [s for s in samples if not s.options]
    check_lengths(
        model,
        open_ended,
        estimated_lengths(open_ended, processor, model.tokens_per_image),
        new_tokens=options.max_new_tokens,
    )
    configurations = [Configuration("before")]
    if intervention is not None or defenses:
        configurations.append(Configuration("after", intervention is not None, tuple(defenses)))
    writer = distributed.cluster().writer
    with writer_lock(out_dir, "evaluation folder") if writer else contextlib.nullcontext():
        context = EvalContext(model, processor, samples, judge, neutral_texts, out_dir, options)
        results: dict[str, Any] = {
            "info": info or {},
            "judge": judge.name,
            "judge_measures": judge.measures,
            "options": dataclasses.asdict(options),
            "settings": measure_all(context, configurations, intervention),
        }
        if intervention is not None:
            results["intervention"] = {**intervention.metadata, "neurons_changed": intervention.num_changed()}
        if defenses:
            results["defenses"] = [d.describe() for d in defenses]
        results.update(headline(results["settings"]))
        if writer:
            write_json(os.path.join(out_dir, "results.json"), results)
            write_report(out_dir, results, intervention=intervention, scores=scores)
        return results


def headline(settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat `metric_setting` numbers (harmful_rate_before, mcq_accuracy_after, ...) for scripts and tables."""
    flat = {}
    for name, metrics in settings.items():
        if "harmful_rate" in metrics:
            flat[f"harmful_rate_{name}"] = metrics["harmful_rate"]["all"]["rate"]
            for group in ("category", "condition"):
                flat[f"harmful_rate_by_{group}_{name}"] = {
                    k: v["rate"] for k, v in metrics["harmful_rate"][group].items() if k != "all"
                }
            flat[f"over_refusal_{name}"] = metrics["over_refusal"]["rate"]
        for key in ("mcq_accuracy", "perplexity", "answer_perplexity", "distinct_2", "tokens_per_s"):
            if key in metrics:
                flat[f"{key}_{name}"] = metrics[key]
    return flat
