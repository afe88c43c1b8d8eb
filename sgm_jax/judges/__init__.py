"""Judges: say whether a model's answer is harmful, each returning the same `Verdict`.

`make_judge(spec, **options)` builds one from "refusal", "lexicon:PATH", "classifier:DIR", "chat" or "self".
"""

from sgm_jax.judges.base import Judge, JudgeError, Verdict
from sgm_jax.judges.chat import ChatJudge
from sgm_jax.judges.classifier import ClassifierJudge
from sgm_jax.judges.factory import make_judge
from sgm_jax.judges.lexicon import LexiconJudge
from sgm_jax.judges.refusal import REFUSAL_PHRASES, RefusalJudge, is_refusal
from sgm_jax.judges.self_judge import SelfJudge

__all__ = [
    "ChatJudge",
    "ClassifierJudge",
    "Judge",
    "JudgeError",
    "LexiconJudge",
    "REFUSAL_PHRASES",
    "RefusalJudge",
    "SelfJudge",
    "Verdict",
    "is_refusal",
    "make_judge",
]
