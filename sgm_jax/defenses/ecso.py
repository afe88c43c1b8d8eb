"""ECSO ("Eyes Closed, Safety On"): answer; let the model check its own answer; on a flagged answer, caption
the image for the request and answer again from the caption alone, without the image.

An outer loop around any inner configuration (SGM gates, shields, SafeCoDe): the first answer and the final
text-only answer come from the inner configuration, the self-check and the caption from plain greedy decoding
of the same (gated) model. Every pass runs at the batch's padded size (`rows`), so it reuses the batch's
compiled programs. Prompts: `ecso_prompts.py`.
"""

from __future__ import annotations

from sgm_jax.data.samples import Sample
from sgm_jax.decoding.answering import plain_answers
from sgm_jax.defenses.base import Defense
from sgm_jax.defenses.ecso_prompts import ANSWER_PROMPT, CAPTION_PROMPT, CHECK_PROMPT, check_says_harmful


class ECSO(Defense):
    name = "ecso"
    stage = "outer"

    def __init__(self, check_tokens: int = 4, caption_tokens: int = 32):
        self.check_tokens, self.caption_tokens = int(check_tokens), int(caption_tokens)
        self.flagged = 0  # answers replaced so far (reports quote it)

    def describe(self):
        return {"name": self.name, "check_tokens": self.check_tokens, "caption_tokens": self.caption_tokens}

    def answer(
        self, inner, base, model, processor, samples, *, max_new_tokens, temperature, seed, rows, length
    ) -> list[str]:
        answers = list(inner(samples))
        checks = plain_answers(
            model,
            processor,
            [Sample(id=s.id, prompt=CHECK_PROMPT.format(answer=a), image=s.image) for s, a in zip(samples, answers)],
            max_new_tokens=self.check_tokens,
            rows=rows,
            length=length,
        )
        flagged = [i for i, reply in enumerate(checks) if check_says_harmful(reply) and samples[i].image]
        if not flagged:
            return answers
        self.flagged += len(flagged)
        captions = plain_answers(
            model,
            processor,
            [
                Sample(
                    id=samples[i].id, prompt=CAPTION_PROMPT.format(question=samples[i].prompt), image=samples[i].image
                )
                for i in flagged
            ],
            max_new_tokens=self.caption_tokens,
            rows=rows,
            length=length,
        )
        blind = [
            Sample(id=samples[i].id, prompt=ANSWER_PROMPT.format(caption=c, question=samples[i].prompt))
            for i, c in zip(flagged, captions)
        ]
        for i, answer in zip(flagged, inner(blind)):
            answers[i] = answer
        return answers
