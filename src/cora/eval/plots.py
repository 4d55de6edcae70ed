"""The paper's comparison figures as PNGs, drawn from result rows (no model needed).

Each function takes rows as produced by :func:`cora.eval.report.report_rows` (plus the row
fields an experiment adds: ``label``, ``no_titles``, ``modules``), writes one PNG atomically and
returns the matplotlib Figure so callers (and tests) can inspect the bars. Rows that carry
``<metric>_ci95`` intervals (:func:`cora.eval.report.add_intervals`) get them as error bars: the
95 % interval of the user-level bootstrap, which need not be symmetric around the bar.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.container import BarContainer

from cora.io import atomic_path


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    # Released from pyplot's registry (a long experiment or test run would hold every figure it
    # drew); the returned figure stays readable for callers that inspect it.
    plt.close(fig)


def _yerr(values: list[float | None], intervals: list[list[float] | None] | None) -> np.ndarray | None:
    """Asymmetric error bars (2, n) from [low, high] intervals; a missing one draws none."""
    if intervals is None or all(ci is None for ci in intervals):
        return None
    err = np.zeros((2, len(values)))
    for j, (v, ci) in enumerate(zip(values, intervals)):
        if v is not None and ci is not None and None not in ci:
            # A percentile interval can sit slightly beside the full-sample value: clip at 0.
            err[:, j] = max(v - ci[0], 0.0), max(ci[1] - v, 0.0)
    return err


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]],
                  intervals: dict[str, list[list[float] | None]] | None = None, ylabel: str = "AUC") -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    intervals = intervals or {}
    whiskers = False
    tops = []  # (x, top of the bar or of its whisker, value) of every drawn bar
    for k, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        yerr = _yerr(values, intervals.get(name))
        whiskers |= yerr is not None
        xs = x + (k - (len(series) - 1) / 2) * width
        ax.bar(xs, heights, width, label=name, yerr=yerr, capsize=3 if yerr is not None else 0,
               error_kw={"elinewidth": 0.8})
        for j, v in enumerate(values):
            if v is not None:
                tops.append((xs[j], v + (yerr[1, j] if yerr is not None else 0.0), v))
    # Each value above its bar's whisker: inside the bar a whisker crosses the label of a short bar.
    for xj, top, v in tops:
        ax.annotate(f"{v:.3f}", (xj, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    rotation=90, fontsize=7)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (0.5)")
    finite = [v for vs in series.values() for v in vs if v is not None]
    finite += [b for cis in intervals.values() for ci in cis if ci for b in ci if b is not None]
    bottom = 0.0
    if finite:
        # Zoomed to the values, the axis starts at a round number below them, and says so: bars cut
        # at 0.35 look several times as different as they are.
        bottom = max(0.0, np.floor((min(0.45, min(finite) - 0.02)) * 20) / 20)
        high = max(finite)
        ax.set_ylim(bottom, high + 0.22 * (high - bottom) + 0.01)  # room for the labels above the whiskers
    ax.set_ylabel(ylabel if bottom == 0 else f"{ylabel} (axis starts at {bottom:.2f}, not 0)")
    # Outside the axes: with many groups a legend inside lands on a bar (or its whisker).
    ax.legend(fontsize=8, title="whiskers: 95 % user bootstrap" if whiskers else None, title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.005, 1), borderaxespad=0)


def _ci(rows: list[dict], metric: str) -> list[list[float] | None]:
    return [r.get(f"{metric}_ci95") for r in rows]


def warm_cold_plot(rows: list[dict], path: str | Path, title: str = "Warm vs cold (Fig. 5)"):
    """Per method: AUC on warm rows (user and item seen in train) next to AUC on cold rows."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    _grouped_bars(ax, [r["method"] for r in rows],
                  {"warm AUC": [r["warm_auc"] for r in rows], "cold AUC": [r["cold_auc"] for r in rows]},
                  {"warm AUC": _ci(rows, "warm_auc"), "cold AUC": _ci(rows, "cold_auc")})
    ax.set_title(title)
    _save(fig, path)
    return fig


def fig5_plot(rows: list[dict], path: str | Path, title: str = "Warm and cold performance (the paper's Fig. 5)"):
    """The paper's Fig. 5 layout: the test rows split into warm (user and item seen in training)
    and cold, one bar per method in each, AUC (left) and UAUC (right), with interval whiskers."""
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.6 * len(rows) + 4), 4))
    for ax, metric in zip(axes, ("auc", "uauc")):
        _grouped_bars(ax, ["warm", "cold"], {r["method"]: [r.get(f"warm_{metric}"), r.get(f"cold_{metric}")]
                                             for r in rows},
                      {r["method"]: [r.get(f"warm_{metric}_ci95"), r.get(f"cold_{metric}_ci95")] for r in rows},
                      ylabel=metric.upper())
        ax.tick_params(axis="x", rotation=0)
        if ax is axes[0]:
            ax.get_legend().remove()  # one legend, beside the right panel
    fig.suptitle(title)
    _save(fig, path)
    return fig


def text_vs_id_plot(rows: list[dict], path: str | Path, title: str = "Text vs ID-only prompts (Fig. 6)"):
    """Methods run twice, with item text in the prompt and ID-only (``id_only``: no item text at
    all, the paper's Fig. 6 variants), paired by ``label``."""
    labels = list(dict.fromkeys(r.get("label", r["method"]) for r in rows))
    by = {(r.get("label", r["method"]), bool(r.get("id_only"))): r for r in rows}
    pick = lambda key, field: [(by.get((lab, key)) or {}).get(field) for lab in labels]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    _grouped_bars(ax, labels, {"with item text": pick(False, "auc"), "ID-only": pick(True, "auc")},
                  {"with item text": pick(False, "auc_ci95"), "ID-only": pick(True, "auc_ci95")})
    ax.set_title(title)
    _save(fig, path)
    return fig


def modules_plot(rows: list[dict], path: str | Path, title: str = "Adapted modules (Table 4)"):
    """One method with different adapted-module sets (qkvof, qkvo, ...): AUC and UAUC."""
    names = [str(r.get("modules", r["method"])) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    _grouped_bars(ax, names, {"AUC": [r["auc"] for r in rows], "UAUC": [r["uauc"] for r in rows]},
                  {"AUC": _ci(rows, "auc"), "UAUC": _ci(rows, "uauc")}, ylabel="AUC / UAUC")
    ax.set_title(title)
    _save(fig, path)
    return fig


_VARIANT_STYLES = ("-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)))


def _line_styles(labels: list[str]) -> list[tuple]:
    """(colour, line style) per curve: one colour per method (a label's first word, so
    "CoRA-MF reference" and "CoRA-MF old" share it) and one line style per variant of it, so a
    plot of more than ten rows never repeats a (colour, style) pair the way one colour cycle would."""
    families = list(dict.fromkeys(label.split()[0] if label.split() else label for label in labels))
    cmap = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        fam = label.split()[0] if label.split() else label
        k = seen[fam] = seen.get(fam, -1) + 1
        out.append((cmap(families.index(fam) % cmap.N), _VARIANT_STYLES[k % len(_VARIANT_STYLES)]))
    return out


def valid_curves_plot(rows: list[dict], path: str | Path, title: str = "Validation AUC vs training step"):
    """One line per row with a ``curve`` (:func:`cora.eval.curves.run_curve`): valid AUC at every
    validation, stage boundaries of staged methods dotted. Rows still training are drawn too."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = [r for r in rows if (r.get("curve") or {}).get("steps")]
    for r, (color, style) in zip(drawn, _line_styles([r.get("label", r["method"]) for r in drawn])):
        c = r["curve"]
        # A stage taken from another run (CoLLM's TALLRec stage) is that run's line: drawn again
        # here it would hide it, so this line starts at the shared part's last point.
        shown = [(s, v) for s, v in zip(c["steps"], c["valid"]) if s >= c.get("shared_until", 0)]
        ax.plot([s for s, _ in shown], [v for _, v in shown], color=color, ls=style, marker="o", ms=3, lw=1.2,
                label=r.get("label", r["method"]))
        for step, _ in c.get("stage_starts", [])[1:]:
            ax.axvline(step, color=color, lw=0.6, ls=":")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("valid AUC")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1), borderaxespad=0)  # clear of the lines
    _save(fig, path)
    return fig


PLOTS = {"warm_cold": warm_cold_plot, "fig5": fig5_plot, "text_vs_id": text_vs_id_plot, "modules": modules_plot,
         "valid_curves": valid_curves_plot}
# Plots drawn from every row with a training log, finished or not (the others need test metrics).
TRAINING_PLOTS = {"valid_curves"}


def bar_count(fig) -> int:
    """Number of drawn bars (NaN bars for missing values included): what tests check."""
    return sum(len(c.patches) for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer))


def error_bars(fig) -> list[tuple[float, float]]:
    """(low, high) of every drawn error bar, series by series: what tests check."""
    out = []
    for ax in fig.axes:
        for c in ax.containers:
            if isinstance(c, BarContainer) and c.errorbar is not None:
                segments = c.errorbar.lines[2][0].get_segments()
                out += [(float(s[0][1]), float(s[1][1])) for s in segments if len(s) == 2]
    return out
