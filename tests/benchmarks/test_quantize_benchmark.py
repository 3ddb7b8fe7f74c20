"""Smoke test of benchmarks/quantize.py: a tiny corpus, a 1-layer model trained 3 steps (plus
a QAT fork of 1 step), every variant saved, loaded and measured, the tables printed."""

from __future__ import annotations

from tests.benchmarks import load


def test_quantize_benchmark_runs_on_tiny_settings(tmp_path, capsys):
    bench = load("quantize")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"m{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n"
                                              for j in range(60)))
    data = bench.prepare_data(tmp_path / "out" / "data", [str(src)], 300, workers=1)
    bench.main(["--out", str(tmp_path / "out"), "--data", str(data), "--steps", "3", "--n-layer", "1",
                "--n-embd", "128", "--n-head", "2", "--block", "64", "--eval-batches", "2",
                "--prompts", "2", "--new-tokens", "3", "--repeats", "1", "--skip-small", "--threads", "1",
                "--qat-seeds", "1", "--qat-steps", "1"])
    out = capsys.readouterr().out
    for name in ("fp32", "bf16", "int8", "int4-g32", "int4-g64", "int4-g128", "HF fp32"):
        assert f"| {name} " in out
    assert "| int4-g128 after QAT " in out and "\n| 0 " in out  # the QAT table, seed 0's row
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "qat_results.json").exists()
    assert (tmp_path / "out" / "int4-g64" / "config.json").exists()
