"""Careless training settings and output paths (issue 13), as a user types them: each is one
line on stderr naming the field, the value and what is allowed, exit status 2, no traceback,
and nothing left on disk. The cases run in one fresh `lmstack` process (a driver calling
`lmstack.cli.main` per case, so that an escaping exception shows as a traceback)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.train.config import RULES, TrainConfig, load_config
from lmstack.train.fields import check, parse
from lmstack.train.checkpoint import check_run_paths
from tests.cli_cases import run_cases

from .conftest import run_overrides





def setting_cases(w: Path) -> list[tuple[list[str], list[str]]]:
    """(--set/--config arguments, fragments the error must hold: field, value, what is allowed)."""
    (w / "a_dir").mkdir()
    (w / "binary.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (w / "maybe.toml").write_text('compile = "maybe"\n')
    return [
        (["--set", "steps=abc"], ["steps", "'abc'", "a whole number"]),
        (["--set", "schedule.lr=abc"], ["schedule.lr", "'abc'", "a finite number"]),
        (["--set", "batch_size=2.5"], ["batch_size", "2.5", "a whole number"]),
        (["--set", "model=5"], ["model", "5", "table", "model.KEY=VALUE"]),
        (["--set", "schedule.lr=nan"], ["schedule.lr", "nan", "a finite number"]),
        (["--set", "schedule.lr=-1"], ["schedule.lr", "-1", "> 0"]),
        (["--set", "compile=maybe"], ["compile", "'maybe'", "true or false"]),
        (["--set", "max_minutes=-1"], ["max_minutes", "-1", "> 0", "none for no limit"]),
        (["--set", "save_every=0"], ["save_every", "0", ">= 1"]),
        (["--set", "log_every=0"], ["log_every", "0", ">= 1"]),
        (["--set", "seed=-1"], ["seed", "-1", "in [0, 4294967296)"]),
        (["--set", "device=tpu"], ["device", "'tpu'", "cuda:N"]),
        (["--set", "precision=fp8"], ["precision", "'fp8'", "fp32, bf16, fp16"]),
        (["--set", "optim=5"], ["optim", "5", "optim.KEY=VALUE", "beta1"]),
        (["--set", "optim.beta1=1"], ["optim.beta1", "1.0", "in [0, 1)"]),
        (["--set", "steps.x=1"], ["steps.x", "single value"]),
        (["--set", "model.n_layer=abc"], ["n_layer", "'abc'", "int"]),
        (["--set", "resume=yes"], ["resume", "'yes'", "true or false"]),
        (["--config", str(w / "a_dir")], ["a_dir", "is a directory", "built-in configs"]),
        (["--config", str(w / "binary.toml")], ["binary.toml", "not a text file"]),
        (["--config", str(w / "maybe.toml")],
         ["maybe.toml", "compile", "'maybe'", "true or false"]),
    ]


def test_bad_settings_are_one_line_errors(data_dir, tmp_path):
    out = tmp_path / "run"
    cases = setting_cases(tmp_path)
    base = ["train", "--set", *run_overrides(data_dir, out)]
    argvs = [["train", *args, *base[1:]] if args[0] == "--config" else [*base, *args[1:]]
             for args, _ in cases]
    for (args, fragments), (code, err, printed) in zip(cases, run_cases(argvs, tmp_path)):
        assert code == 2, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
        for fragment in fragments:
            assert fragment in err, (args, fragment, err)
        assert not out.exists(), args  # refused before anything was made


def test_output_paths_are_checked_before_the_work(data_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me too")
    new = tmp_path / "new"
    src = tmp_path / "src.txt"
    src.write_text("def f(x):\n    return x + 1\n" * 50)
    tok = data_dir / "tokenizer.json"
    train = ["train", "--set", *run_overrides(data_dir, new)]
    cases = [
        (train + [f"out_dir={a_file}"], ["out_dir", "is a file"]),
        (train + [f"out_dir={foreign}"], ["out_dir", "not empty", "notes.txt", "train_state.pt",
                                          "new or empty directory"]),
        (train + [f"out_dir={a_file / 'run'}"], ["cannot be created", "is a file"]),
        # Validation that needs the tokenizer (after the config is parsed) still makes nothing.
        (train + ["model.vocab_size=10"], ["vocab_size", "smaller"]),
        (train + ["block_size=64"], ["block_size 64", "model.block_size 32"]),
        (["data", "prepare", "--quiet", "--source", str(src), "--tokenizer", str(tok), "--out",
          str(a_file)], ["--out", "is a file"]),
        (["data", "prepare", "--quiet", "--source", str(src), "--tokenizer", str(tok), "--out",
          str(foreign)], ["--out", "not empty", "not a shard directory", "manifest.json"]),
        (["tokenizer", "train", "--quiet", "--source", str(src), "--vocab-size", "300", "--out",
          str(foreign)], ["--out", "is a directory", "tokenizer.json"]),
        (["tokenizer", "train", "--quiet", "--source", str(src), "--vocab-size", "300", "--out",
          str(a_file)], ["--out", "exists and is not a tokenizer file"]),
        (["tokenizer", "train", "--quiet", "--source", str(src), "--vocab-size", "300", "--out",
          str(tmp_path / "t.json"), "--hf-out", str(foreign)], ["--hf-out", "is a directory"]),
    ]
    results = run_cases([argv for argv, _ in cases], tmp_path)
    for (argv, fragments), (code, err, printed) in zip(cases, results):
        assert code == 2 and "Traceback" not in err, (argv, err)
        for fragment in fragments:
            assert fragment in err, (argv, fragment, err)
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not new.exists() and not (tmp_path / "t.json").exists()


def test_out_dir_may_be_a_run_or_hold_its_own_inputs(data_dir, tmp_path):
    """A previous run is reused in place, and quickstart's layout (OUT/tokenizer.json and
    OUT/data inside the run's directory) is not 'a directory of something else'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("")
    check_run_paths(data_dir, run)
    layout = tmp_path / "quick"
    (layout / "data").mkdir(parents=True)
    (layout / "tokenizer.json").write_text("{}")
    check_run_paths(layout / "data", layout, layout / "tokenizer.json")
    (layout / "stray.txt").write_text("")  # negative control: something else in it is refused
    with pytest.raises(ConfigError, match="stray.txt"):
        check_run_paths(layout / "data", layout, layout / "tokenizer.json")


def test_resume_says_what_it_does(data_dir, tmp_path):
    out = tmp_path / "run"
    train = ["train", "--set", *run_overrides(data_dir, out, "steps=4", "save_every=2")]
    fresh, resumed, again = run_cases([train + ["--resume"], train + ["steps=6", "--resume"],
                                       train], tmp_path)
    assert fresh[0] == 0 and "no checkpoint in" in fresh[2] and "starting fresh" in fresh[2]
    assert resumed[0] == 0 and "resuming from step 4" in resumed[2]
    assert "trained 6 steps" in resumed[2]
    # A plain run over its own directory is neither: it starts over without a word.
    assert again[0] == 0 and "resuming from" not in again[2] and "starting fresh" not in again[2]


def test_the_cli_as_a_process(data_dir, tmp_path):
    """The same refusals from a real `lmstack` process: exit status 2, one line, nothing left."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lmstack.cli", "train", "--set",
                           *run_overrides(data_dir, out), "steps=abc"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "lmstack: error: steps must be a whole number, got 'abc'"
    assert not out.exists()


# ---- properties of the field parser ---------------------------------------------------------


def leaves(cls=TrainConfig, prefix="") -> list[tuple[str, typing.Any]]:
    """(dotted name, annotation) of every setting of the config tree."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            found.append((prefix + f.name, hints[f.name]))
    return found


LEAVES = dict(leaves())
NAMES = [*LEAVES, "model.n_layer", "model.n_embd", "model.model_type", "model.dropout"]
TEXTS = st.one_of(st.text(max_size=12), st.integers().map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["true", "false", "none", "nan", "inf", "-1", "0", "1e6", "2.5",
                                   "[1, 2]", "{a = 1}", '"quoted"', "1e400", "10" * 30]))


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(NAMES), TEXTS)
def test_any_text_is_a_checked_value_or_a_config_error_naming_the_field(name, text):
    try:
        cfg = load_config(None, [f"{name}={text}"])
    except ConfigError as e:
        assert name.rsplit(".", 1)[-1] in str(e)
        return
    if name in LEAVES:  # what was stored has the field's type and passes its rule
        value = get(cfg, name)
        assert check(value, LEAVES[name], name, RULES.get(name)) == value


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**12), st.floats(1e-12, 1e12))
def test_numbers_round_trip_through_their_text(n, x):
    assert parse(str(n), int, "steps") == n
    assert parse(repr(x), float, "schedule.lr") == x
    assert parse(str(float(n)), int, "steps") == n  # TOML reads 1e3 as a float


def test_negative_controls_of_the_property():
    """Values the property would flag: what check() refuses, so the property can fail."""
    with pytest.raises(ConfigError, match="steps"):
        check(True, int, "steps", RULES["steps"])
    with pytest.raises(ConfigError, match="steps"):
        check(0, int, "steps", RULES["steps"])
    with pytest.raises(ConfigError, match="schedule.lr"):
        check(float("inf"), float, "schedule.lr")
