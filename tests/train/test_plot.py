"""plot_runs draws real logs into a valid PNG, atomically, and refuses runs without a log."""

from __future__ import annotations

import json
import math
import random
import statistics
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmstack.errors import DataError
from lmstack.train.checkpoint import LOG
from lmstack.train.plot import plot_runs, smooth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / LOG).write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def fake_run(run, scale=1.0):
    records = [{"step": s, "loss": scale * (6.0 - s / 10), "lr": 1e-3} for s in range(1, 31)]
    for r in records[9::10]:
        r["val_loss"] = r["loss"] + 0.2
    return write_log(run, records)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"  # the first chunk
    return struct.unpack(">II", data[16:24])


def test_plot_of_two_runs_is_a_png(tmp_path):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", scale=0.9)
    out = plot_runs([a, b], tmp_path / "plots" / "curves.png")
    width, height = png_size(out)
    one = png_size(plot_runs([a], tmp_path / "one.png", metrics=("loss",)))
    assert (width, height) == one  # train and validation loss of both runs share one axis
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left


def test_one_panel_per_metric_that_occurs(tmp_path):
    run = fake_run(tmp_path / "a")
    one = png_size(plot_runs([run], tmp_path / "one.png", metrics=("loss",)))
    missing = png_size(plot_runs([run], tmp_path / "two.png", metrics=("loss", "val_bpb")))
    assert one == missing  # val_bpb is in no log: no empty panel for it
    three = png_size(plot_runs([run], tmp_path / "three.png", metrics=("loss", "val_loss", "lr")))
    assert three[0] > 1.5 * one[0]  # loss and val_loss on one panel (same unit), lr on another


def test_a_run_from_the_trainer_plots(data_dir, tmp_path):
    from lmstack.train import load_config, train
    from tests.train.conftest import run_overrides

    out = tmp_path / "run"
    train(load_config(None, run_overrides(data_dir, out, "steps=6", "eval_every=3")))
    # The trainer logs both default metrics under the names the plot reads: one panel (their
    # shared unit) with both, as wide as the panel of "loss" alone; with lr, a second panel.
    both = png_size(plot_runs([out], tmp_path / "run.png"))
    one = png_size(plot_runs([out], tmp_path / "loss.png", metrics=("loss",)))
    assert both == one
    with_lr = png_size(plot_runs([out], tmp_path / "lr.png", metrics=("loss", "val_loss", "lr")))
    assert with_lr[0] > 1.5 * one[0]


def test_no_log_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no log.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(DataError, match="no runs"):
        plot_runs([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_unknown_metrics_are_a_clear_error(tmp_path):
    run = fake_run(tmp_path / "a")
    with pytest.raises(DataError, match="none of the metrics"):
        plot_runs([run], tmp_path / "x.png", metrics=("los",))


@given(st.floats(-10, 10), st.floats(-1, 1), st.integers(1, 60), st.integers(1, 10))
def test_smoothing_leaves_a_straight_line_as_it_is(start, slope, n, half_width):
    line = [start + slope * i for i in range(n)]
    assert smooth(line, half_width) == pytest.approx(line, abs=1e-9)


def test_smoothed_loss_does_not_trail_above_a_falling_loss():
    """A fast-falling noisy loss: the centered average stays near the true curve, where a
    trailing EMA (the negative control, bias-corrected as Adam's) sits above it."""
    rng = random.Random(0)
    true = [4.6 + 4.4 * math.exp(-i / 4.5) for i in range(61)]
    raw = [t + rng.gauss(0, 0.12) for t in true]
    ema, m = [], 0.0
    for t, v in enumerate(raw, start=1):
        m = 0.8 * m + 0.2 * v
        ema.append(m / (1 - 0.8**t))
    early = slice(1, 15)  # while the loss falls fast
    above = lambda curve: statistics.mean(c - t for c, t in zip(curve[early], true[early]))
    assert above(ema) > 0.3
    assert abs(above(smooth(raw, half_width=3))) < 0.1
    assert smooth(raw, 3)[0] == raw[0]  # the first point is not pulled toward later ones
