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

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from sgm_jax.atomic import write_json
from sgm_jax.convert import CheckpointError
from sgm_jax.data.samples import DatasetError, Sample
from sgm_jax.evaluate.answers import generate_answers
from sgm_jax.evaluate.judges import Judge, is_refusal
from sgm_jax.evaluate.likelihood import response_scores, text_scores
from sgm_jax.evaluate.mcq import mcq_accuracy
from sgm_jax.evaluate.rates import distinct_n, grouped_rates, rate_with_interval
from sgm_jax.evaluate.report import write_report
from sgm_jax.interventions import Intervention, intervene
from sgm_jax.lengths import check_lengths, estimated_lengths
from sgm_jax.locks import writer_lock


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    max_new_tokens: int = 32
    batch_size: int = 8
    temperature: float = 0.0
    seed: int = 0
    circular: bool = False
    n_boot: int = 1000
    progress: bool = True


def _measure(
    name: str,
    model: nnx.Module,
    base: nnx.Module,
    processor,
    samples: Sequence[Sample],
    judge: Judge,
    neutral: Sequence[str],
    out_dir: str,
    opts: EvalOptions,
) -> dict[str, Any]:
    open_ended = [s for s in samples if not s.options]
    choice = [s for s in samples if s.options]
    metrics: dict[str, Any] = {}
    if open_ended:
        answers = generate_answers(
            model,
            processor,
            open_ended,
            cache_path=os.path.join(out_dir, f"answers_{name}.jsonl"),
            max_new_tokens=opts.max_new_tokens,
            batch_size=opts.batch_size,
            temperature=opts.temperature,
            seed=opts.seed,
            progress=opts.progress,
        )
        harmful = [s for s in open_ended if s.label == 1]
        benign = [s for s in open_ended if s.label == 0]
        verdicts = judge.judge_many(
            [(s.prompt, answers[s.id], s.image) for s in harmful], categories=[s.category for s in harmful]
        )
        flags = [v.harmful for v in verdicts]
        boot = {"n_boot": opts.n_boot, "seed": opts.seed}
        metrics["harmful_rate"] = {
            "all": rate_with_interval(flags, **boot),
            "category": grouped_rates(flags, [s.category for s in harmful], **boot),
            "condition": grouped_rates(flags, [s.condition for s in harmful], **boot),
        }
        metrics["over_refusal"] = rate_with_interval([is_refusal(answers[s.id]) for s in benign], **boot)
        texts = [answers[s.id] for s in open_ended]
        metrics["distinct_2"] = distinct_n(texts, 2)
        answered = [dataclasses.replace(s, response=answers[s.id]) for s in open_ended if answers[s.id]]
        if answered:
            metrics["answer_perplexity"] = response_scores(
                base, processor, answered, batch_size=opts.batch_size
            ).perplexity
        metrics["examples"] = [
            {"id": s.id, "prompt": s.prompt, "answer": answers[s.id], "harmful": v.harmful, "judge": v.detail}
            for s, v in list(zip(harmful, verdicts))[:5]
        ]
    if choice:
        metrics["mcq_accuracy"] = mcq_accuracy(
            model, processor, choice, circular=opts.circular, batch_size=opts.batch_size
        ).accuracy
    if neutral:
        metrics["perplexity"] = text_scores(
            model, getattr(processor, "tokenizer", processor), neutral, batch_size=opts.batch_size
        ).perplexity
    return metrics


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
) -> dict[str, Any]:
    """Measure `model` before and after `intervention`; write results.json, report.md and plots to `out_dir`."""
    if processor is None:
        raise CheckpointError("evaluation needs the checkpoint's tokenizer/processor files")
    unlabelled = [s.id for s in samples if not s.options and s.label is None]
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} open-ended samples have no label (first: {unlabelled[:5]}); evaluation "
            f"needs label 1 (harmful) or 0 (benign)"
        )
    open_ended = [s for s in samples if not s.options]
    check_lengths(
        model,
        open_ended,
        estimated_lengths(open_ended, processor, model.tokens_per_image),
        new_tokens=options.max_new_tokens,
    )
    with writer_lock(out_dir, "evaluation folder"):
        settings = {"before": model}
        if intervention is not None:
            settings["after"] = intervene(model, intervention)
        results: dict[str, Any] = {
            "info": info or {},
            "judge": judge.name,
            "options": dataclasses.asdict(options),
            "settings": {},
        }
        if intervention is not None:
            results["intervention"] = {**intervention.metadata, "neurons_changed": intervention.num_changed()}
        for name, setting_model in settings.items():
            results["settings"][name] = _measure(
                name, setting_model, model, processor, samples, judge, neutral_texts, out_dir, options
            )
        results.update(headline(results["settings"]))
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
        for key in ("mcq_accuracy", "perplexity", "answer_perplexity", "distinct_2"):
            if key in metrics:
                flat[f"{key}_{name}"] = metrics[key]
    return flat
