"""Loss curves of training runs, one panel per metric, one line per run, saved as a PNG.

    lmstack plot runs/a runs/b --out curves.png [--metrics loss val_loss val_bpb]

Reads each run's `log.jsonl` (checkpoint.read_log) and draws every record that has the metric
against its step. Training loss is noisy from batch to batch, so its raw curve is drawn faint
with an exponential moving average on top; validation metrics are sparse and drawn as points
joined by lines. Uses matplotlib's object API with the Agg canvas (no display, no pyplot global
state), and writes the file atomically.

    >>> ema([1.0, 3.0, 3.0], weight=0.5)
    [1.0, 2.0, 2.5]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmstack.atomic import atomic_open
from lmstack.errors import DataError
from lmstack.train.checkpoint import LOG, read_log

LABELS = {"loss": "train loss (nats/token)", "val_loss": "validation loss (nats/token)",
          "val_ppl": "validation perplexity", "val_bpb": "validation bits per byte",
          "lr": "learning rate", "tokens_per_s": "tokens / s", "mfu": "MFU"}


def ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average that starts at the first value (no bias toward 0)."""
    out: list[float] = []
    for v in values:
        out.append(v if not out else weight * out[-1] + (1 - weight) * v)
    return out


def _series(records: list[dict], metric: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[metric]) for r in records if metric in r and "step" in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_png: str | os.PathLike,
              metrics: Sequence[str] = ("loss", "val_loss")) -> Path:
    """Draw `metrics` of every run's log.jsonl into `out_png`; returns its path."""
    if not run_dirs:
        raise DataError("no runs to plot: pass one or more training output directories")
    logs = {}
    for run in run_dirs:
        records = read_log(run)
        if not records:
            raise DataError(f"{Path(run) / LOG} is missing or empty; plot the output directory of "
                            "a training run (`lmstack train` writes log.jsonl there)")
        logs[Path(run)] = records
    names = _labels(list(logs))
    shown = [m for m in metrics if any(_series(r, m)[0] for r in logs.values())]
    if not shown:
        raise DataError(f"none of the metrics {list(metrics)} occur in the logs of "
                        f"{', '.join(map(str, logs))}; check the names (e.g. loss, val_loss)")

    fig = Figure(figsize=(5.5 * len(shown), 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, metric in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        for k, (run, records) in enumerate(logs.items()):
            steps, values = _series(records, metric)
            if not steps:
                continue
            color = f"C{k % 10}"
            if metric == "loss" and len(values) > 1:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps, ema(values, 0.8), color=color, linewidth=1.6, label=names[k])
            else:
                ax.plot(steps, values, color=color, marker="o", markersize=3, linewidth=1.4,
                        label=names[k])
        ax.set_xlabel("step")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.set_title(LABELS.get(metric, metric))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    out = Path(out_png)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png")
    return out


def _labels(runs: list[Path]) -> list[str]:
    """Short legend names: the directory names, or longer paths where two names clash."""
    names = [r.name or str(r) for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names)]
