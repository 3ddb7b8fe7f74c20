"""The `lmstack` command: every --help works, tokenizer commands do what they say, and errors
are one line on stderr with exit status 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from lmstack.cli import build_parser, main


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


@pytest.mark.parametrize("argv", [(), *_subcommands(build_parser())])
def test_every_help_is_useful(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lmstack" in out and len(out.splitlines()) > 3


@pytest.fixture
def tok_file(tok, tmp_path):
    return str(tok.save(tmp_path / "tok.json"))


def test_encode_decode_round_trip(tok, tok_file, capsys):
    text = "def f(x):\n    return 'héllo' + x"
    assert main(["tokenizer", "encode", "--tokenizer", tok_file, "--text", text, "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == tok.encode(text)
    assert main(["tokenizer", "decode", "--tokenizer", tok_file, "--no-newline",
                 *map(str, ids)]) == 0
    assert capsys.readouterr().out == text


def test_reference_engine_flag(tok, tok_file, capsys):
    main(["tokenizer", "encode", "--tokenizer", tok_file, "--text", "naïve 你好", "--engine",
          "reference"])
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("naïve 你好")]


class _Terminal:
    def isatty(self):
        return True


def test_inspect_shows_pieces_and_summary(tok_file, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", _Terminal())
    main(["tokenizer", "inspect", "--tokenizer", tok_file, "--text", "hello world 42"])
    out = capsys.readouterr().out
    assert "␣world" in out and "tokens" in out
    main(["tokenizer", "inspect", "--tokenizer", tok_file])
    assert "vocab_size" in capsys.readouterr().out


def test_special_token_in_text_is_an_error_unless_allowed(tok, tok_file, capsys):
    code = main(["tokenizer", "encode", "--tokenizer", tok_file, "--text", "a<|endoftext|>"])
    err = capsys.readouterr().err
    assert code == 2 and "--allow-special" in err and "Traceback" not in err
    main(["tokenizer", "encode", "--tokenizer", tok_file, "--text", "a<|endoftext|>",
          "--allow-special"])
    assert str(tok.eot_id) in capsys.readouterr().out.split()


def test_tokenizer_train_on_files(tmp_path, corpus, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(corpus[:8]):
        (src / f"doc{i}.txt").write_text(doc)
    out = tmp_path / "t.json"
    assert main(["tokenizer", "train", "--source", str(src), "--vocab-size", "300", "--out",
                 str(out), "--hf-out", str(tmp_path / "hf"), "--quiet"]) == 0
    assert out.exists() and (tmp_path / "hf" / "tokenizer.json").exists()
    assert "vocab_size=300" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tokenizer", "encode", "--tokenizer", "/nonexistent.json", "--text", "x"],
         "does not exist"),
        (["tokenizer", "train", "--source", "/nonexistent-dir", "--out", "/tmp/x.json"],
         "nonexistent"),
        (["tokenizer", "decode", "--tokenizer", "TOK", "1", "x2"], "must be integers"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, message, tok_file, tmp_path):
    argv = [tok_file if a == "TOK" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "lmstack.cli", *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("lmstack: error:")


def test_building_the_parser_leaves_heavy_work_unimported():
    """Each command imports its work when it runs: `lmstack --help` loads no web server and no
    plotting library (the registry holds only the flag and run functions)."""
    code = ("import sys; from lmstack.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'matplotlib', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
