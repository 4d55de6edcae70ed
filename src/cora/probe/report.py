"""Probe results: accuracy per row and task with a 95 % question bootstrap; table, plot, JSON.

**Interval.** Questions are the resampling unit (each is one independent draw of an item): a
resample draws the task's questions with replacement and recomputes the accuracy; the interval
is the 2.5th-97.5th percentile over the resamples. The same resamples serve every row, so each
row's difference to the frozen backbone (the first row) is paired and gets its own interval:
"did fine-tuning lower the accuracy" is that difference, not two overlapping intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cora.io import atomic_path, write_text
from cora.probe.questions import TASKS
from cora.probe.rows import Row
from cora.probe.scoring import predictions

CHANCE = 0.25  # 4 choices


def summarise(rows: list[Row], answers: dict[str, np.ndarray], resamples: int, seed: int) -> list[dict]:
    """Per row and task: accuracy, its interval, and the paired difference to rows[0]."""
    draws = {task: np.random.default_rng([seed, k]).integers(0, len(answers[task]), (resamples, len(answers[task])))
             for k, task in enumerate(TASKS) if task in answers}
    correct = [{task: (predictions(r.logliks[task]) == answers[task]).astype(np.float64) for task in draws}
               for r in rows]
    out = []
    for row, hits in zip(rows, correct):
        tasks = {}
        for task, idx in draws.items():
            boot = hits[task][idx].mean(axis=1)
            diff = (hits[task] - correct[0][task])[idx].mean(axis=1)
            tasks[task] = {"n": len(hits[task]), "accuracy": float(hits[task].mean()), "ci95": _ci(boot),
                           "diff_vs_first": float(hits[task].mean() - correct[0][task].mean()), "diff_ci95": _ci(diff),
                           "choices": predictions(row.logliks[task]).tolist()}
        out.append({"name": row.name, "method": row.method, "source": row.source, "detail": row.detail,
                    "seconds": round(row.seconds, 2), "tasks": tasks})
    return out


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    lo, hi = stats["ci95"]
    return f"{stats['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


def headers(summary: list[dict]) -> list[str]:
    tasks = [t for t in TASKS if t in summary[0]["tasks"]]
    return ["model", *[f"{t} (n={summary[0]['tasks'][t]['n']})" for t in tasks]]


def table_rows(summary: list[dict]) -> list[list[str]]:
    tasks = [t for t in TASKS if t in summary[0]["tasks"]]
    return [[r["name"], *[cell(r["tasks"].get(t)) for t in tasks]] for r in summary]


def markdown(summary: list[dict], notes: list[str], resamples: int) -> str:
    head = headers(summary)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(summary)]
    tasks = [t for t in TASKS if t in summary[0]["tasks"]]
    diffs = ["", f"Difference to {summary[0]['name']} [95 % paired interval]:", "",
             "| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for r in summary[1:]:
        diffs.append("| " + r["name"] + " | " + " | ".join(
            f"{r['tasks'][t]['diff_vs_first']:+.3f} [{r['tasks'][t]['diff_ci95'][0]:+.3f}, "
            f"{r['tasks'][t]['diff_ci95'][1]:+.3f}]" for t in tasks) + " |")
    text = "\n".join(lines)
    if len(summary) > 1:
        text += "\n" + "\n".join(diffs)
    foot = [f"Accuracy of 4-choice questions (chance {CHANCE:.2f}) [95 % interval: {resamples} bootstrap "
            "resamples of the questions]."] + [f"- {n}" for n in notes]
    return text + "\n\n" + "\n".join(foot) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if t in summary[0]["tasks"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tasks) * max(len(summary), 2) / 2, 3.6))
    width = 0.8 / len(summary)
    x = np.arange(len(tasks))
    for k, r in enumerate(summary):
        acc = [r["tasks"][t]["accuracy"] for t in tasks]
        # A percentile interval may sit slightly beside the full-sample value: clip at 0.
        err = np.array([[max(a - r["tasks"][t]["ci95"][0], 0.0) for a, t in zip(acc, tasks)],
                        [max(r["tasks"][t]["ci95"][1] - a, 0.0) for a, t in zip(acc, tasks)]])
        bars = ax.bar(x + (k - (len(summary) - 1) / 2) * width, acc, width, yerr=err, capsize=3, label=r["name"],
                      error_kw={"elinewidth": 0.8})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(CHANCE, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("knowledge probe (whiskers: 95 % question bootstrap)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_markdown(path: Path, summary: list[dict], notes: list[str], resamples: int) -> None:
    write_text(path, markdown(summary, notes, resamples))
