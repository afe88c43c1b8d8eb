"""Many intervention settings measured on the same data together: for K settings at a time, the answers to every
prompt (harmful rate with its 95% interval, over-refusal, answer fluency) and the likelihoods behind
multiple-choice accuracy and perplexity, each a compiled call vmapped over K gate states.

Prompts, multiple-choice rows and neutral texts are encoded and batched once, whatever the number of settings.
`measure(..., vmapped=False)` runs the same settings one at a time through the same compiled functions, each on
its model from `sgm_jax.intervene`: the one-by-one loop a sweep is compared against, and what it must equal
(`shared_compile` keeps every setting on the sweep's gates, so the loop compiles once too).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample, require_labels
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches
from sgm_jax.decoding.generate import decode, decode_arguments, decode_swept
from sgm_jax.decoding.lengths import check_lengths
from sgm_jax.evaluate.likelihood import (
    Scored,
    encode_response,
    response_scores,
    scoring_batches,
    target_logprobs,
    text_sequences,
)
from sgm_jax.evaluate.mcq import mcq_result, mcq_rows
from sgm_jax.evaluate.metrics import answer_metrics
from sgm_jax.interventions import GateStack, Intervention, intervene
from sgm_jax.judges import Judge
from sgm_jax.runtime.errors import OptionError

METRICS = (
    "harmful_rate",
    "harmful_rate_low",
    "harmful_rate_high",
    "over_refusal",
    "mcq_accuracy",
    "perplexity",
    "answer_perplexity",
    "distinct_2",
)


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How settings are measured: answer length, prompts per batch, settings per compiled call (a batch runs
    `batch_size * chunk_size` rows), the bootstrap of the harmful rate's interval."""

    max_new_tokens: int = 24
    batch_size: int = 16
    chunk_size: int = 16
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self):
        if min(self.max_new_tokens, self.batch_size, self.chunk_size, self.n_boot) < 1:
            raise OptionError(f"sweep options must all be >= 1, got {self}")


class SettingsEvaluator:
    """Everything one data set needs to measure settings, prepared once: encoded prompt batches, the
    multiple-choice rows and neutral texts as scoring batches."""

    def __init__(
        self,
        model,
        processor,
        samples: Sequence[Sample],
        neutral: Sequence[str],
        judge: Judge,
        *,
        sites: Sequence[str],
        options: SweepOptions = SweepOptions(),
    ):
        self.model, self.processor, self.judge, self.options = model, processor, judge, options
        self.stack = GateStack(model, sites)
        require_labels(samples, "a sweep")
        open_ended = [s for s in samples if not s.options]
        self.open_ended = open_ended
        pad = pad_token_id(processor)
        prompts = [encode(dataclasses.replace(s, response=None), processor) for s in open_ended]
        check_lengths(model, open_ended, [len(e["input_ids"]) for e in prompts], new_tokens=options.max_new_tokens)
        # (rows, decode's arguments): padded and checked once, whatever the settings; every batch as long as the
        # longest, so the sweep compiles one decode program (see `sgm_jax.decoding.lengths.run_length`)
        self.prompt_batches = []
        plan = plan_batches([len(e["input_ids"]) for e in prompts], options.batch_size)
        longest = max([len(e["input_ids"]) for e in prompts], default=0)
        for rows in plan:
            batch = collate([prompts[i] for i in rows], pad, len(plan[0]), longest)
            arguments = decode_arguments(
                model,
                batch.pop("input_ids"),
                attention_mask=batch.pop("attention_mask"),
                max_new_tokens=options.max_new_tokens,
                seed=options.seed,
                processor=processor,
                **batch,
            )
            self.prompt_batches.append((rows, arguments))
        choice = [s for s in samples if s.options]
        self.mcq = mcq_rows(choice) if choice else None
        mcq_sequences = [encode_response(s, processor) for s in self.mcq.samples] if self.mcq else []
        self.mcq_batches = list(scoring_batches(model, mcq_sequences, options.batch_size, pad))
        tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer = tokenizer
        neutral_sequences = text_sequences(tokenizer, neutral)
        self.neutral_batches = list(scoring_batches(model, neutral_sequences, options.batch_size, pad))
        self.neutral_tokens = sum(int(s["targets"].sum()) for s in neutral_sequences)

    def runner(
        self, interventions: Sequence[Intervention], *, vmapped: bool = True, shared_compile: bool = False
    ) -> Vmapped | OneByOne:
        """How these settings run: all at once over their gate states (built once, padded to the chunk size), or
        one by one on each setting's gated model: as `sgm_jax.intervene` makes it (a new gate pattern compiles
        again), or with `shared_compile` on this sweep's gates, identity gates kept."""
        if vmapped:
            return Vmapped(
                self.stack, self.stack.padded_state(interventions, self.options.chunk_size), len(interventions)
            )
        gated = self.stack.model if shared_compile else functools.partial(intervene, self.model)
        return OneByOne([gated(iv) for iv in interventions])

    def measure(
        self,
        interventions: Sequence[Intervention],
        *,
        vmapped: bool = True,
        shared_compile: bool = False,
        keep_answers: bool = False,
    ) -> list[dict[str, Any]]:
        """Every metric of each setting, in order (at most `chunk_size` settings per vmapped call); with
        `keep_answers`, each setting's answer texts too (under "answers", in the order of the open-ended samples)."""
        if vmapped and len(interventions) > self.options.chunk_size:
            raise OptionError(f"{len(interventions)} settings exceed the chunk size {self.options.chunk_size}")
        run = self.runner(interventions, vmapped=vmapped, shared_compile=shared_compile)
        answers = self.answers(run, len(interventions))
        mcq = self._logprobs(run, self.mcq_batches, len(interventions)) if self.mcq else None
        neutral = self._logprobs(run, self.neutral_batches, len(interventions)) if self.neutral_batches else None
        fluency = self._answer_perplexity(answers)
        rows = [
            self._metrics(
                answers[k], fluency[k], None if mcq is None else mcq[k], None if neutral is None else neutral[k]
            )
            for k in range(len(interventions))
        ]
        if keep_answers:
            for row, texts in zip(rows, answers):
                row["answers"] = texts
        return rows

    def answers(self, run: Vmapped | OneByOne, count: int) -> list[list[str]]:
        """`[setting][sample]` answer texts to the open-ended prompts, as `sgm_jax.answer` decodes them."""
        texts = [[""] * len(self.open_ended) for _ in range(count)]
        for rows, (args, static) in self.prompt_batches:
            tokens, steps = run.decode(args, static)
            for k in range(count):
                decoded = self.tokenizer.batch_decode(tokens[k, : len(rows), : int(steps[k])], skip_special_tokens=True)
                for i, text in zip(rows, decoded):
                    texts[k][i] = text.strip()
        return texts

    def _logprobs(self, run: Vmapped | OneByOne, batches, count: int) -> np.ndarray:
        """`[setting, rows]` summed target log-probabilities over scoring batches."""
        total = sum(len(rows) for rows, _ in batches)
        out = np.zeros((count, total))
        for rows, batch in batches:
            lp, _ = run(target_logprobs, batch)
            out[:, rows] = np.asarray(lp)[:, : len(rows)]
        return out

    def _answer_perplexity(self, answers: list[list[str]]) -> list[float | None]:
        """Each setting's answers scored under the model without gates (fluency), all settings in one pass; an
        answer several settings gave to the same prompt is scored once."""
        unique: dict[tuple[int, str], int] = {}
        for texts in answers:
            for i, text in enumerate(texts):
                if text:
                    unique.setdefault((i, text), len(unique))
        if not unique:
            return [None] * len(answers)
        scored = response_scores(
            self.model,
            self.processor,
            [dataclasses.replace(self.open_ended[i], response=text) for i, text in unique],
            batch_size=self.options.batch_size,
        )
        out = []
        for texts in answers:
            rows = [unique[(i, text)] for i, text in enumerate(texts) if text]
            out.append(Scored(scored.logprob[rows], scored.tokens[rows]).perplexity if rows else None)
        return out

    def _metrics(self, answers: list[str], answer_perplexity, mcq_logprob, neutral_logprob) -> dict[str, Any]:
        metrics: dict[str, Any] = dict.fromkeys(METRICS)
        if self.open_ended:
            measured, _ = answer_metrics(
                self.open_ended, answers, self.judge, n_boot=self.options.n_boot, seed=self.options.seed
            )
            rate, refusal = measured["harmful_rate"]["all"], measured["over_refusal"]
            if rate["n"]:
                metrics.update(harmful_rate=rate["rate"], harmful_rate_low=rate["low"], harmful_rate_high=rate["high"])
            if refusal["n"]:
                metrics["over_refusal"] = refusal["rate"]
            metrics["distinct_2"] = measured["distinct_2"]
            metrics["answer_perplexity"] = answer_perplexity
        if mcq_logprob is not None:
            metrics["mcq_accuracy"] = mcq_result(self.mcq, mcq_logprob).accuracy
        if neutral_logprob is not None:
            metrics["perplexity"] = Scored(neutral_logprob, np.asarray([self.neutral_tokens])).perplexity
        return metrics


class Vmapped:
    """K settings at once: `run(fn, *args)` vmaps `fn(gated model, *args)` over their gate states; `decode` runs the
    decoding loop once for all of them (`sgm_jax.decoding.generate.decode_swept`). Results drop the chunk's padding."""

    def __init__(self, stack: GateStack, gates, count: int):
        self.stack, self.gates, self.count = stack, gates, count

    def __call__(self, fn, *args):
        return jax.tree.map(lambda x: np.asarray(x)[: self.count], self.stack.run(self.gates, fn, *args))

    def decode(self, args: tuple, static: dict) -> tuple[np.ndarray, np.ndarray]:
        out = decode_swept(self.gates, self.stack.rest, *args, graphdef=self.stack.graphdef, **static)
        return tuple(np.asarray(x)[: self.count] for x in out)


class OneByOne:
    """The same, one setting's model after another (each call compiled for its model's structure)."""

    def __init__(self, models: list[nnx.Module]):
        self.models = models

    def __call__(self, fn, *args):
        outs = [fn(m, *args) for m in self.models]
        return [np.stack([np.asarray(o[i]) for o in outs]) for i in range(len(outs[0]))]

    def decode(self, args: tuple, static: dict) -> tuple[np.ndarray, np.ndarray]:
        return self(functools.partial(decode, **static), *args)
