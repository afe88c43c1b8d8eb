"""SGM*: a set of configurations (an intervention or not, a stack of defenses) measured on the same data in one
run, into one table and one plot.

Each configuration is measured like a setting of `evaluate` (harmful rate with its 95% interval, over-refusal,
multiple-choice accuracy, perplexity, answer perplexity under the base model, tokens/s), its answers cached
under its own name, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from sgm_jax.data.samples import Sample, require_labels
from sgm_jax.defenses import (
    ECSO,
    AdaShieldS,
    Prober,
    ProberGate,
    ProbeVerdicts,
    SafeCoDe,
    SelfVerdicts,
    SystemPromptShield,
    VerdictSource,
)
from sgm_jax.defenses.factory import DEFENSES, DefenseOptions, make_defenses
from sgm_jax.evaluate.runner import Configuration, EvalContext, EvalOptions, measure_all
from sgm_jax.interventions import Intervention
from sgm_jax.judges import Judge
from sgm_jax.runtime import distributed
from sgm_jax.runtime.atomic import atomic_write, write_json
from sgm_jax.runtime.errors import OptionError
from sgm_jax.runtime.locks import writer_lock

COLUMNS = ("harmful_rate", "over_refusal", "mcq_accuracy", "perplexity", "answer_perplexity", "tokens_per_s")


def standard_configurations(
    *, verdicts: VerdictSource | None = None, prober: Prober | None = None, intervention: bool = True
) -> list[Configuration]:
    """none, each defense alone, and (with an intervention) SGM, SGM + each defense, the prober-gated SGM and
    all together. SafeCoDe's verdicts: `verdicts`, else the prober's, else the model's own (self)."""
    verdicts = verdicts or (ProbeVerdicts(prober) if prober is not None else SelfVerdicts())
    alone = {
        "safecode": (SafeCoDe(verdicts),),
        "shield": (SystemPromptShield(),),
        "adashield": (AdaShieldS(),),
        "ecso": (ECSO(),),
    }
    configs = [Configuration("none")] + [Configuration(name, False, d) for name, d in alone.items()]
    if not intervention:
        return configs
    configs.insert(1, Configuration("sgm", True))
    configs += [Configuration(f"sgm+{name}", True, d) for name, d in alone.items()]
    if prober is not None:
        configs.append(Configuration("gated-sgm", True, (ProberGate(prober),)))
    configs.append(Configuration("all", True, (SystemPromptShield(), ECSO(), SafeCoDe(verdicts))))
    return configs


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The comparison's numbers for one configuration (rates as fractions; None where not measured)."""
    harmful = metrics.get("harmful_rate", {}).get("all", {})
    return {
        "harmful_rate": harmful.get("rate"),
        "harmful_rate_low": harmful.get("low"),
        "harmful_rate_high": harmful.get("high"),
        "over_refusal": metrics.get("over_refusal", {}).get("rate"),
        "mcq_accuracy": metrics.get("mcq_accuracy"),
        "perplexity": metrics.get("perplexity"),
        "answer_perplexity": metrics.get("answer_perplexity"),
        "tokens_per_s": metrics.get("tokens_per_s"),
    }


def comparison_table(comparison: dict[str, dict[str, Any]], measures: str = "harmful rate") -> str:
    """Markdown: one row per configuration; `measures` names the judge's rate (`Judge.measures`)."""
    head = f"| configuration | {measures} (95% CI) | over-refusal | MCQ accuracy | perplexity | answer ppl | tokens/s |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    pct = lambda v: "–" if v is None else f"{v:.1%}"
    num = lambda v, f: "–" if v is None else f.format(v)
    for name, row in comparison.items():
        ci = (
            ""
            if row["harmful_rate_low"] is None
            else f" [{row['harmful_rate_low']:.1%}, {row['harmful_rate_high']:.1%}]"
        )
        lines.append(
            f"| {name} | {pct(row['harmful_rate'])}{ci} | {pct(row['over_refusal'])} | {pct(row['mcq_accuracy'])} | "
            f"{num(row['perplexity'], '{:.3f}')} | {num(row['answer_perplexity'], '{:.2f}')} | "
            f"{num(row['tokens_per_s'], '{:.0f}')} |"
        )
    return "\n".join(lines)


def _plot(path: str, comparison: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(comparison)
    rows = [comparison[n] for n in names]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    x = range(len(names))
    rate = [r["harmful_rate"] or 0.0 for r in rows]
    err = [
        [max(0.0, (r["harmful_rate"] or 0) - (r["harmful_rate_low"] or 0)) for r in rows],
        [max(0.0, (r["harmful_rate_high"] or 0) - (r["harmful_rate"] or 0)) for r in rows],
    ]
    bars.bar([i - 0.2 for i in x], rate, 0.4, yerr=err, capsize=3, label="harmful rate (95% CI)")
    bars.bar([i + 0.2 for i in x], [r["over_refusal"] or 0.0 for r in rows], 0.4, label="over-refusal (benign)")
    bars.set_xticks(list(x), names, rotation=45, ha="right")
    bars.set_ylim(0, 1)
    bars.legend()
    bars.set_title("SGM* comparison")
    for name, r in zip(names, rows):
        if r["harmful_rate"] is not None and r["mcq_accuracy"] is not None:
            scatter.scatter(r["harmful_rate"], r["mcq_accuracy"])
            scatter.annotate(name, (r["harmful_rate"], r["mcq_accuracy"]), fontsize=8)
    scatter.set_xlabel("harmful rate (lower is safer)")
    scatter.set_ylabel("multiple-choice accuracy")
    scatter.set_title("safety vs reasoning")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def compare(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    judge: Judge,
    out_dir: str,
    configurations: Sequence[Configuration],
    intervention: Intervention | None = None,
    neutral_texts: Sequence[str] = (),
    options: EvalOptions | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every configuration; write comparison.json, comparison.md and comparison.png to `out_dir`."""
    require_labels(samples, "a comparison")
    writer = distributed.cluster().writer
    with writer_lock(out_dir, "comparison folder") if writer else contextlib.nullcontext():
        context = EvalContext(model, processor, samples, judge, neutral_texts, out_dir, options or EvalOptions())
        settings = measure_all(context, configurations, intervention)
        comparison = {name: summary(metrics) for name, metrics in settings.items()}
        results = {
            "info": info or {},
            "judge": judge.name,
            "judge_measures": judge.measures,
            "configurations": {
                c.name: {"intervention": c.intervention, "defenses": [d.describe() for d in c.defenses]}
                for c in configurations
            },
            "comparison": comparison,
            "settings": settings,
        }
        if writer:
            _write(out_dir, results)
        return results


def _write(out_dir: str, results: dict[str, Any]) -> None:
    """comparison.json, comparison.md and comparison.png."""
    write_json(os.path.join(out_dir, "comparison.json"), results)
    text = comparison_table(results["comparison"], results["judge_measures"])

    def write_table(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"# SGM* comparison\n\n{text}\n")

    atomic_write(os.path.join(out_dir, "comparison.md"), write_table)
    _plot(os.path.join(out_dir, "comparison.png"), results["comparison"])


def parse_configuration(spec: str, options: DefenseOptions) -> Configuration:
    """A configuration from its name: "none", "sgm", a defense, or several joined by "+" ("sgm+safecode+shield");
    "gated-sgm" is SGM behind the prober gate. The name is the spec."""
    parts = [p for p in spec.split("+") if p]
    if not parts:
        raise OptionError(f"empty configuration {spec!r}")
    if parts == ["none"]:
        return Configuration("none")
    intervention = any(p in ("sgm", "gated-sgm") for p in parts)
    names = ["prober-gate" if p == "gated-sgm" else p for p in parts if p != "sgm"]
    unknown = [p for p in names if p not in DEFENSES]
    if unknown or "none" in parts:
        raise OptionError(
            f"configuration {spec!r}: {', '.join(unknown) or 'none'} is not sgm, gated-sgm or a defense "
            f"({', '.join(DEFENSES)}); 'none' stands alone"
        )
    return Configuration(spec, intervention, tuple(make_defenses(names, options)))
