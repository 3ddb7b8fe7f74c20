"""The quickstart end to end on a small slice of the stdlib: every stage leaves its files, and a
second run reuses them instead of redoing the work."""

import json

import pytest

from lmstack.quickstart import QuickstartConfig, quickstart

from .conftest import STDLIB


@pytest.mark.slow
def test_quickstart_end_to_end_and_reuse(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted(STDLIB.glob("*.py"))[:60]:
        (src / path.name).write_bytes(path.read_bytes())
    cfg = QuickstartConfig(out=str(tmp_path / "qs"), sources=(str(src),), vocab_size=400,
                           steps=4, progress=False)
    first = quickstart(cfg)
    out = tmp_path / "qs"
    for name in ("tokenizer.json", "config.json", "model.safetensors", "train_state.pt",
                 "log.jsonl", "loss.png", "data/train.bin", "data/val.bin", "data/report.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 400
    assert first["val_bpb"] > 0 and first["val_ppl"] > 1
    printed = capsys.readouterr().out
    assert "temperature 0.7" in printed and "bits per byte" in printed
    # The reading of the numbers quotes this run's own figures, and its baselines.
    reading = " ".join(printed[printed.index("What these numbers say:"):].split())  # unwrapped
    assert f"perplexity {first['val_ppl']:.1f}: " in reading and "of its 4-token runs" in reading
    assert "knowing only how often each token occurs" in reading and "zlib -9 needs" in reading

    mtime = (out / "model.safetensors").stat().st_mtime_ns
    second = quickstart(cfg)
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 3
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert second["val_loss"] == pytest.approx(first["val_loss"])
