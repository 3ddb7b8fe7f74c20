"""plot_runs draws real logs into a valid PNG, atomically, and refuses runs without a log."""

from __future__ import annotations

import json
import struct

import pytest

from lmstack.errors import DataError
from lmstack.train.checkpoint import LOG
from lmstack.train.plot import plot_runs

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
    assert width > 2 * height > 0  # two panels side by side
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left


def test_one_panel_per_metric_that_occurs(tmp_path):
    run = fake_run(tmp_path / "a")
    one = png_size(plot_runs([run], tmp_path / "one.png", metrics=("loss",)))
    missing = png_size(plot_runs([run], tmp_path / "two.png", metrics=("loss", "val_bpb")))
    assert one == missing  # val_bpb is in no log: no empty panel for it
    three = png_size(plot_runs([run], tmp_path / "three.png", metrics=("loss", "val_loss", "lr")))
    assert three[0] > 2 * one[0]


def test_a_run_from_the_trainer_plots(data_dir, tmp_path):
    from lmstack.train import load_config, train
    from tests.train.conftest import run_overrides

    out = tmp_path / "run"
    train(load_config(None, run_overrides(data_dir, out, "steps=6", "eval_every=3")))
    # The trainer logs both default metrics under the names the plot reads: two panels, each
    # as wide as the one panel of "loss" alone.
    both = png_size(plot_runs([out], tmp_path / "run.png"))
    one = png_size(plot_runs([out], tmp_path / "loss.png", metrics=("loss",)))
    assert both == (2 * one[0], one[1])


def test_no_log_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="log.jsonl is missing or empty"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(DataError, match="no runs"):
        plot_runs([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_unknown_metrics_are_a_clear_error(tmp_path):
    run = fake_run(tmp_path / "a")
    with pytest.raises(DataError, match="none of the metrics"):
        plot_runs([run], tmp_path / "x.png", metrics=("los",))
