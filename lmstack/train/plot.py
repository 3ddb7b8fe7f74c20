"""Curves of training runs, one panel per unit, one color per run, saved as a PNG.

    lmstack plot runs/a runs/b --out curves.png [--metrics loss val_loss val_bpb]

Reads each run's `log.jsonl` (checkpoint.read_log) and draws every record that has the metric
against its step. Metrics in the same unit share a panel: train and validation loss are both
nats per token, so they are drawn on one axis, where they can be compared (the gap between them
is overfitting). Training loss is noisy from batch to batch, so its raw curve is drawn faint
with a centered moving average on top (no lag: see `smooth`); validation metrics are sparse
and drawn as points joined by dashed lines. Uses matplotlib's object API with the Agg canvas
(no display, no pyplot global state), and writes the file atomically.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmstack.atomic import atomic_open
from lmstack.errors import DataError
from lmstack.train.checkpoint import LOG, read_log

# metric -> (the panel it is drawn in: its unit, the line's name within that panel)
LABELS = {"loss": ("loss (nats/token)", "train"), "val_loss": ("loss (nats/token)", "validation"),
          "val_ppl": ("validation perplexity", ""), "val_bpb": ("validation bits per byte", ""),
          "lr": ("learning rate", ""), "tokens_per_s": ("tokens / s", ""), "mfu": ("MFU", ""),
          # preference runs (lmstack reward, lmstack dpo): the step's pairs and the held-out ones
          "accuracy": ("accuracy", "train"), "val_accuracy": ("accuracy", "validation"),
          "margin": ("reward margin (chosen - rejected)", "train"),
          "val_margin": ("reward margin (chosen - rejected)", "validation"),
          "chosen_reward": ("reward", "chosen"), "rejected_reward": ("reward", "rejected"),
          "val_chosen_reward": ("reward", "validation chosen"),
          "val_rejected_reward": ("reward", "validation rejected"),
          # RL runs (lmstack rl): the rollouts' mean reward beside the held-out greedy answers'
          "reward": ("reward", "train"), "val_reward": ("reward", "validation"),
          "kl": ("KL to the reference (nats/token)", ""), "clip_fraction": ("clip fraction", ""),
          "completion_tokens": ("completion tokens", "")}


def smooth(values: Sequence[float], half_width: int) -> list[float]:
    """Centered moving average whose window shrinks near the ends to stay centered: point i is
    the mean of values[i-h : i+h+1], h = min(half_width, i, n-1-i).

    Centered, it has no lag: a straight line comes out unchanged, so the smoothed curve of a
    falling loss stays on the raw one, where a trailing average (an EMA, bias-corrected or not)
    trails above it while the loss falls fast. The first and last points are their own mean.

    >>> [round(v, 3) for v in smooth([9.0, 7.0, 5.0, 4.0, 4.0], half_width=2)]
    [9.0, 7.0, 5.8, 4.333, 4.0]
    >>> smooth([3.0, 2.0, 1.0, 0.0], half_width=5)  # a straight line is left as it is
    [3.0, 2.0, 1.0, 0.0]
    """
    sums = [0.0, *itertools.accumulate(values)]  # sums[j] = values[0] + ... + values[j-1]
    n = len(values)
    out = []
    for i in range(n):
        h = min(half_width, i, n - 1 - i)
        out.append((sums[i + h + 1] - sums[i - h]) / (2 * h + 1))
    return out


def _series(records: list[dict], metric: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[metric]) for r in records if metric in r and "step" in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _why_no_records(run: Path) -> str:
    """What is wrong with a run that has no log record: which of four things a user can fix."""
    log = run / LOG
    if not run.is_dir():
        what = "is a file, not a directory" if run.exists() else "does not exist"
        return f"{run} {what}; pass the output directory of a training run (it holds {LOG})"
    if not log.is_file():
        return (f"{run} has no {LOG}; plot the output directory of a training run "
                f"(`lmstack train` writes {LOG} there)")
    if not log.read_bytes().strip():
        return f"{log} is empty: the run has not logged a step yet; plot it after its first log"
    return (f"{log} is corrupt: none of its lines is a JSON record; it is not a log that "
            "`lmstack train` wrote, or it was damaged: train again or restore it")


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_png: str | os.PathLike,
              metrics: Sequence[str] = ("loss", "val_loss")) -> Path:
    """Draw `metrics` of every run's log.jsonl into `out_png`; returns its path."""
    if not run_dirs:
        raise DataError("no runs to plot: pass one or more training output directories")
    logs = {}
    for run in run_dirs:
        records = read_log(run)
        if not records:
            raise DataError(_why_no_records(Path(run)))
        logs[Path(run)] = records
    names = _labels(list(logs))
    shown = [m for m in metrics if any(_series(r, m)[0] for r in logs.values())]
    if not shown:
        raise DataError(f"none of the metrics {list(metrics)} occur in the logs of "
                        f"{', '.join(map(str, logs))}; check the names (e.g. loss, val_loss)")

    panels: dict[str, list[str]] = {}  # unit -> its metrics, in the order asked
    for metric in shown:
        panels.setdefault(_label(metric)[0], []).append(metric)
    fig = Figure(figsize=(5.5 * len(panels), 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (unit, panel) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for k, (run, records) in enumerate(logs.items()):
            for metric in panel:
                label = " ".join(x for x in (names[k] if len(logs) > 1 else "",
                                             _label(metric)[1]) if x) or names[k]
                color = f"C{(k if len(logs) > 1 else panel.index(metric)) % 10}"
                _draw(ax, metric, *_series(records, metric), color, label)
        ax.set_xlabel("step")
        ax.set_ylabel(unit)
        ax.set_title(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    out = Path(out_png)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png")
    return out


def _label(metric: str) -> tuple[str, str]:
    return LABELS.get(metric, (metric, ""))


def _draw(ax, metric: str, steps: list[int], values: list[float], color: str, label: str) -> None:
    """One metric of one run: training loss raw (faint) and smoothed, the others as points
    (validation ones joined by dashes, so they stand apart from the training line)."""
    if not steps:
        return
    if metric == "loss" and len(values) > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        # About 1/20 of the run on each side: the batch noise goes, the shape of the curve stays.
        smoothed = smooth(values, half_width=max(1, len(values) // 20))
        ax.plot(steps, smoothed, color=color, linewidth=1.6, label=f"{label} (smoothed)")
    else:
        ax.plot(steps, values, color=color, marker="o", markersize=3, linewidth=1.4,
                linestyle="--" if metric.startswith("val_") else "-", label=label)


def _labels(runs: list[Path]) -> list[str]:
    """Short legend names: the directory names, or longer paths where two names clash."""
    names = [r.name or str(r) for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names)]
