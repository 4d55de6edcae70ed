"""The paper's comparison figures as PNGs, drawn from result rows (no model needed).

Each function takes rows as produced by :func:`cora.eval.report.report_rows` (plus the row
fields an experiment adds: ``label``, ``no_titles``, ``modules``), writes one PNG atomically and
returns the matplotlib Figure so callers (and tests) can inspect the bars.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cora.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, heights, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    finite = [v for vs in series.values() for v in vs if v is not None]
    if finite:
        ax.set_ylim(min(0.45, min(finite) - 0.02), max(finite) + 0.04)
    ax.legend(fontsize=8)


def warm_cold_plot(rows: list[dict], path: str | Path, title: str = "Warm vs cold (Fig. 5)"):
    """Per method: AUC on warm rows (user and item seen in train) next to AUC on cold rows."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    _grouped_bars(ax, [r["method"] for r in rows],
                  {"warm AUC": [r["warm_auc"] for r in rows], "cold AUC": [r["cold_auc"] for r in rows]})
    ax.set_ylabel("AUC")
    ax.set_title(title)
    _save(fig, path)
    return fig


def text_vs_id_plot(rows: list[dict], path: str | Path, title: str = "Text vs ID-only prompts (Fig. 6)"):
    """Methods run twice, with history titles in the prompt and without (``no_titles``)."""
    labels = list(dict.fromkeys(r.get("label", r["method"]) for r in rows))
    value = {(r.get("label", r["method"]), bool(r.get("no_titles"))): r["auc"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    _grouped_bars(ax, labels, {"with titles": [value.get((lab, False)) for lab in labels],
                               "ID-only": [value.get((lab, True)) for lab in labels]})
    ax.set_ylabel("AUC")
    ax.set_title(title)
    _save(fig, path)
    return fig


def modules_plot(rows: list[dict], path: str | Path, title: str = "Adapted modules (Table 4)"):
    """One method with different adapted-module sets (qkvof, qkvo, ...): AUC and UAUC."""
    names = [str(r.get("modules", r["method"])) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    _grouped_bars(ax, names, {"AUC": [r["auc"] for r in rows], "UAUC": [r["uauc"] for r in rows]})
    ax.set_title(title)
    _save(fig, path)
    return fig


PLOTS = {"warm_cold": warm_cold_plot, "text_vs_id": text_vs_id_plot, "modules": modules_plot}


def bar_count(fig) -> int:
    """Number of drawn bars (NaN bars for missing values included): what tests check."""
    return sum(len(c.patches) for ax in fig.axes for c in ax.containers)
