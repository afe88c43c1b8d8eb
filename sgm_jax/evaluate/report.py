"""report.md with the before/after table, and the PNG plots beside it."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from sgm_jax.interventions import Intervention
from sgm_jax.runtime.atomic import atomic_write

ROWS = [
    ("harmful rate", "harmful_rate", "{:.1%}"),
    ("over-refusal (benign)", "over_refusal", "{:.1%}"),
    ("multiple-choice accuracy", "mcq_accuracy", "{:.1%}"),
    ("perplexity (neutral text)", "perplexity", "{:.2f}"),
    ("answer perplexity (base model)", "answer_perplexity", "{:.2f}"),
    ("distinct-2", "distinct_2", "{:.3f}"),
]


def table(results: dict[str, Any]) -> str:
    """The before/after table as Markdown (also what `sgm-jax evaluate` prints)."""
    names = list(results["settings"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, fmt in ROWS:
        label = results.get("judge_measures", label) if key == "harmful_rate" else label
        cells = [results.get(f"{key}_{n}") for n in names]
        if any(c is not None for c in cells):
            lines.append(f"| {label} | " + " | ".join("–" if c is None else fmt.format(c) for c in cells) + " |")
    measures = results.get("judge_measures", "harmful rate")
    for group in ("condition", "category"):
        keys = sorted({k for n in names for k in results.get(f"harmful_rate_by_{group}_{n}", {})})
        for key in keys:
            cells = [results.get(f"harmful_rate_by_{group}_{n}", {}).get(key) for n in names]
            lines.append(
                f"| {measures}, {group} {key} | " + " | ".join("–" if c is None else f"{c:.1%}" for c in cells) + " |"
            )
    return "\n".join(lines)


def _plot(path: str, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    draw(ax)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _harmful_by_category(ax, results):
    names = list(results["settings"])
    categories = sorted({k for n in names for k in results.get(f"harmful_rate_by_category_{n}", {})})
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [results.get(f"harmful_rate_by_category_{name}", {}).get(c, 0.0) for c in categories]
        ax.bar(np.arange(len(categories)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(categories)) + width * (len(names) - 1) / 2, categories, rotation=30, ha="right")
    ax.set_ylabel("harmful rate")
    ax.set_ylim(0, 1)
    ax.set_title("Harmful rate per category")
    ax.legend()


def _layer(site: str) -> str:
    match = re.search(r"layers\.(\d+)", site)
    return match.group(1) if match else site


def write_report(
    out_dir: str,
    results: dict[str, Any],
    *,
    intervention: Intervention | None = None,
    scores: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Write report.md and the plots; return the PNG paths."""
    plots = []
    if any(f"harmful_rate_by_category_{n}" in results for n in results["settings"]):
        plots.append(os.path.join(out_dir, "harmful_rate_by_category.png"))
        _plot(plots[-1], lambda ax: _harmful_by_category(ax, results))
    if intervention is not None and intervention.alphas:
        alphas = np.concatenate(list(intervention.alphas.values()))
        changed = alphas[alphas != 1]

        def draw_alphas(ax):
            ax.hist(changed if changed.size else alphas, bins=40)
            ax.set_xlabel("alpha")
            ax.set_ylabel("neurons")
            ax.set_title(f"Gate values of the {changed.size} changed neurons (of {alphas.size})")

        plots.append(os.path.join(out_dir, "alpha_distribution.png"))
        _plot(plots[-1], draw_alphas)
    if scores:
        by_layer: dict[str, list[np.ndarray]] = {}
        for site, s in scores.items():
            by_layer.setdefault(_layer(site), []).append(np.asarray(s))
        layers = sorted(by_layer, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        threshold = intervention.metadata.get("threshold", 0.5) if intervention is not None else 0.5

        def draw_hist(ax):
            for layer in layers:
                ax.hist(np.concatenate(by_layer[layer]), bins=50, range=(0, 1), histtype="step", label=f"layer {layer}")
            ax.axvline(threshold, color="k", linestyle="--", linewidth=1)
            ax.set_xlabel("AUROC")
            ax.set_ylabel("neurons")
            ax.set_title("Per-neuron AUROC by layer")
            ax.legend(fontsize=7, ncol=2)

        def draw_experts(ax):
            ax.bar(layers, [int((np.concatenate(by_layer[k]) > threshold).sum()) for k in layers])
            ax.set_xlabel("layer")
            ax.set_ylabel(f"experts (AUROC > {threshold})")
            ax.set_title("Expert neurons per layer")

        plots.append(os.path.join(out_dir, "auroc_by_layer.png"))
        _plot(plots[-1], draw_hist)
        plots.append(os.path.join(out_dir, "experts_per_layer.png"))
        _plot(plots[-1], draw_experts)

    lines = ["# Evaluation report", ""]
    info = results.get("info", {})
    if info:
        lines += [f"- {k}: {v}" for k, v in info.items()] + [""]
    measures = results.get("judge_measures", "harmful rate")
    said = "." if measures == "harmful rate" else f" (its harmful rate is the {measures})."
    lines += [f"Judge: `{results['judge']}`{said}", ""]
    if "intervention" in results:
        meta = results["intervention"]
        lines += [
            "Intervention: " + ", ".join(f"{k}={v}" for k, v in meta.items() if not isinstance(v, (list, dict))),
            "",
        ]
    lines += [table(results), ""]
    for name, metrics in results["settings"].items():
        if metrics.get("examples"):
            lines += [f"## Example answers ({name})", ""]
            lines += [
                f"- `{e['id']}` {'**harmful**' if e['harmful'] else 'ok'}: {e['answer'][:160]!r}"
                for e in metrics["examples"]
            ] + [""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    text = "\n".join(lines) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(os.path.join(out_dir, "report.md"), write)
    return plots
