"""`compile=true` trains the same model as eager mode (torch.compile on CPU needs a C compiler,
which this machine kind has)."""

import pytest

from lmstack.train import load_config, train
from lmstack.train.checkpoint import read_log

from .conftest import run_overrides


@pytest.mark.slow
def test_compiled_training_matches_eager(data_dir, tmp_path):
    losses = {}
    for mode in ("false", "true"):
        out = tmp_path / mode
        train(load_config(None, run_overrides(data_dir, out, "steps=3", f"compile={mode}")))
        losses[mode] = [r["loss"] for r in read_log(out) if "loss" in r]
    assert len(losses["true"]) == 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
