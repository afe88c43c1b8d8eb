"""The Pareto front of a sweep: the settings no other setting beats on safety and on what it costs, and its plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sgm_jax.runtime.atomic import atomic_write

# (x, y, whether a larger y is better, label, y scale) of each panel; x is always the harmful rate, lower is better.
PANELS = (
    ("harmful_rate", "mcq_accuracy", True, "multiple-choice accuracy (reasoning)", "linear"),
    ("harmful_rate", "perplexity", False, "perplexity on neutral text (fluency, log scale)", "log"),
)


def pareto_front(x: Sequence[float], y: Sequence[float], *, maximize_y: bool) -> np.ndarray:
    """Boolean mask of the points no other point dominates (lower x, and higher y if `maximize_y` else lower y;
    at least as good on both and better on one). Points with a missing value are never on the front."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64) * (-1.0 if maximize_y else 1.0)  # both minimised from here
    valid = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(len(x), bool)
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        dominated = others & (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        front[i] = not dominated.any()
    return front


def plot_pareto(
    path: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    highlights: Mapping[str, str] = {},
    title: str = "sweep",
) -> None:
    """Harmful rate against reasoning and against perplexity, one point per setting coloured by method, each
    panel's front joined by a line, the `highlights` (setting key -> label) ringed and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(PANELS), figsize=(6.5 * len(PANELS), 5), dpi=110)
    methods = sorted({row["method"] for row in rows})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (x_name, y_name, maximize, y_label, scale) in zip(axes, PANELS):
        x = np.asarray([_num(row.get(x_name)) for row in rows])
        y = np.asarray([_num(row.get(y_name)) for row in rows])
        for method in methods:
            mine = np.asarray([row["method"] == method for row in rows])
            ax.scatter(x[mine], y[mine], s=14, alpha=0.6, color=colours[method], label=method)
        front = pareto_front(x, y, maximize_y=maximize)
        order = np.flatnonzero(front)[np.argsort(x[front])]
        ax.plot(x[order], y[order], "k-", lw=1.2, label="Pareto front")
        ax.scatter(x[order], y[order], s=40, facecolors="none", edgecolors="k")
        finite = np.isfinite(x) & np.isfinite(y)
        shown = [i for i, row in enumerate(rows) if row["key"] in highlights and finite[i]]
        for n, i in enumerate(shown):  # labels alternate above and below, so neighbours stay readable
            ax.scatter([x[i]], [y[i]], s=160, marker="*", color="crimson", zorder=5)
            offset = (8, 8) if n % 2 == 0 else (8, -14)
            ax.annotate(highlights[rows[i]["key"]], (x[i], y[i]), textcoords="offset points", xytext=offset, fontsize=8)
        ax.set_yscale(scale)
        if scale == "log":  # plain numbers on the ticks, not powers of ten
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("harmful rate (lower is safer)")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}: {len(rows)} settings (front: no setting is safer and better)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _num(value) -> float:
    return float("nan") if value is None else float(value)
