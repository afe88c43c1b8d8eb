"""`make_judge`: a judge from a short spec string, as a command line or a config file names it."""

from __future__ import annotations

from sgm_jax.judges.base import Judge
from sgm_jax.judges.chat import ChatJudge
from sgm_jax.judges.classifier import ClassifierJudge
from sgm_jax.judges.lexicon import LexiconJudge
from sgm_jax.judges.python import python_judge
from sgm_jax.judges.refusal import RefusalJudge
from sgm_jax.judges.self_judge import SelfJudge
from sgm_jax.runtime.errors import OptionError

SPECS = ("refusal", "lexicon:PATH", "classifier:DIR", "python:MODULE:NAME", "chat", "self")


def make_judge(spec: str, **options) -> Judge:
    """The judge a spec names: "refusal", "lexicon:PATH", "classifier:DIR", "python:MODULE:NAME" (your own code,
    `sgm_jax.judges.python`), "chat" (endpoint from options or the environment) or "self" (needs `model=` and
    `processor=`); `options` go to the judge's constructor."""
    kind, _, argument = spec.partition(":")
    if kind == "python":
        return python_judge(argument, **options)
    if kind in ("lexicon", "classifier") and not argument:
        raise OptionError(f"judge {kind!r} needs a path: write it as '{kind}:{'PATH' if kind == 'lexicon' else 'DIR'}'")
    if kind in ("refusal", "chat", "self") and argument:
        raise OptionError(f"judge {kind!r} takes no ':' argument (got {spec!r}); pass settings as options")
    if kind == "refusal":
        return RefusalJudge(**options)
    if kind == "lexicon":
        return LexiconJudge(argument, **options)
    if kind == "classifier":
        return ClassifierJudge(argument, **options)
    if kind == "chat":
        return ChatJudge(**options)
    if kind == "self":
        missing = [name for name in ("model", "processor") if options.get(name) is None]
        if missing:
            raise OptionError(
                f"the 'self' judge needs {' and '.join(f'{m}=' for m in missing)}: the sgm_jax model "
                f"that judges, and its processor (from sgm_jax.load_model)"
            )
        return SelfJudge(**options)
    raise OptionError(f"unknown judge {spec!r}; known: {', '.join(SPECS)}")
