"""`lmstack --help` and every `lmstack X --help` import no torch (nor the web server, nor
matplotlib), show each flag's default, and every command that runs a model takes --threads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from lmstack.cli import COMMANDS, Group, HelpFormatter, apply_threads, build_parser, main
from lmstack.errors import ConfigError

HEAVY = ("torch", "fastapi", "uvicorn", "matplotlib")

# One fresh interpreter runs every --help in turn, as `lmstack ... --help` would, and reports
# which heavy modules each one left imported; a control then imports torch the way a command
# run does, so the check is seen to notice it.
PROBE = """
import contextlib, io, json, sys
from lmstack.cli import COMMANDS, Group, main
argvs = [[]]
for name, c in COMMANDS.items():
    argvs.append([name])
    if isinstance(c, Group):
        argvs += [[name, sub] for sub in c.commands]
found = {}
for argv in argvs:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
    found[" ".join(argv)] = [m for m in %r if m in sys.modules]
import lmstack.infer.engine
found["control: import lmstack.infer.engine"] = [m for m in %r if m in sys.modules]
print(json.dumps(found))
""" % (HEAVY, HEAVY)


def test_no_help_imports_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    control = found.pop("control: import lmstack.infer.engine")
    assert "torch" in control  # the probe sees torch when it is imported
    assert len(found) > 20 and "serve" in found and "tokenizer train" in found
    assert {argv: mods for argv, mods in found.items() if mods} == {}


def _leaves(commands=COMMANDS, prefix=()):
    for name, c in commands.items():
        if isinstance(c, Group):
            yield from _leaves(c.commands, (*prefix, name))
        else:
            yield (*prefix, name), c


def _subparser(argv) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in argv:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def test_every_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    for shown in ("(default: 8000)", "(default: 8)", "(default: 64)", "(default: 1000000)",
                  "(default: 256)", "(default: 30.0)", "default: info"):
        assert shown in out, shown
    assert "(default: None)" not in out and "(default: False)" not in out
    # Everywhere, not only serve: each flag with a value to show shows it.
    for argv, _ in _leaves():
        p = _subparser(argv)
        assert p.formatter_class is HelpFormatter, argv
        text = " ".join(p.format_help().split())
        for action in p._actions:
            d = action.default
            if (action.option_strings and isinstance(d, (int, float, str)) and not isinstance(d, bool)
                    and d is not argparse.SUPPRESS):
                assert f"{d}" in text, (argv, action.dest, d)


def test_models_take_threads_and_the_others_do_not():
    kinds = {"train": "compute", "eval": "compute", "train-heads": "compute", "quickstart": "compute",
             "sft": "compute", "reward": "compute", "dpo": "compute", "rl": "compute",
             "distill": "compute",
             "generate": "decode", "sample-compare": "decode", "chat": "decode", "serve": "decode",
             "query": "decode"}
    for argv, command in _leaves():
        flags = {s for a in _subparser(argv)._actions for s in a.option_strings}
        name = " ".join(argv)
        assert ("--threads" in flags) == (name in kinds), argv
        assert command.threads == kinds.get(name), argv


def test_default_threads(monkeypatch):
    import os

    import lmstack.cli as cli

    assert 0 <= cli.idle_cores(0.05) <= os.cpu_count()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for idle, expected in ((2.0, 2), (1.9, 2), (1.5, 1), (1.0, 1), (0.0, 1)):
        monkeypatch.setattr(cli, "idle_cores", lambda idle=idle: idle)
        assert cli.default_threads("compute") == expected, idle
        assert cli.default_threads("decode") == 1
    monkeypatch.setattr(cli, "idle_cores", lambda: 2.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the idle cores
    assert cli.default_threads("compute") == 1


def test_apply_threads(monkeypatch):
    import torch

    import lmstack.cli as cli

    before = torch.get_num_threads()
    monkeypatch.setattr(cli, "idle_cores", lambda: 2.0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        assert apply_threads(None, "decode") == 1 and torch.get_num_threads() == 1
        assert apply_threads(None, "compute") == 2 and torch.get_num_threads() == 2
        assert apply_threads(3, "decode") == 3 and torch.get_num_threads() == 3
        with pytest.raises(ConfigError, match="--threads must be a positive integer"):
            apply_threads(0)
    finally:
        torch.set_num_threads(before)


def test_bad_threads_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "lmstack.cli", "eval", "--model", "nowhere",
                           "--data", "nothing.txt", "--threads", "-1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--threads must be a positive integer, got -1" in proc.stderr


def test_quantize_flags_match_the_quantizer():
    from lmstack.infer.quantize import BITS, GROUP_SIZES

    p = _subparser(["quantize"])
    bits = next(a for a in p._actions if a.dest == "bits")
    group = next(a for a in p._actions if a.dest == "group_size")
    assert tuple(sorted(bits.choices)) == tuple(sorted(BITS))
    assert ", ".join(map(str, GROUP_SIZES[:-1])) + f" or {GROUP_SIZES[-1]}" in group.help
    assert group.default in GROUP_SIZES
