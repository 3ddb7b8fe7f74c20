"""Careless input, as a new user types it (issue 13): each case is one line on stderr, exit
status 2, no traceback, nothing left behind. The plain error cases run together in one fresh
`lmstack` process (a driver calling `lmstack.cli.main` per case, so that an escaping exception
shows as a traceback); Ctrl-C and the busy port need a process of their own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from tests.cli_cases import run_cases

BLOCK = 16  # the tiny model's context, so that a long prompt is easy to write



@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_model(d, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=1, n_head=2,
                                n_embd=32)))
    tok.save(d / "tokenizer.json")
    return d




def error_cases(model: Path, tok_file: Path, w: Path) -> list[tuple[list[str], list[str]]]:
    """(argv, fragments the one-line error must hold): the problem and the fix."""
    no_tok = w / "no-tok-model"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((model / name).read_bytes())
    (w / "corrupt").mkdir()
    (w / "corrupt" / "log.jsonl").write_text("garbage{{{\n\x00\x01\n")
    (w / "empty-log").mkdir()
    (w / "empty-log" / "log.jsonl").write_text("")
    (w / "empty.txt").write_text("")
    (w / "blank.txt").write_text("  \n\n")
    (w / "hello.txt").write_text("hello world, hello again")
    (w / "adir").mkdir()
    gen = ["generate", "--model", str(model), "--max-new-tokens", "2"]
    tt = ["tokenizer", "train", "--quiet", "--vocab-size", "300"]
    return [
        (gen + ["--prompt", "x", "--seed", str(2**70)], ["seed", "9223372036854775807", "2**63 - 1"]),
        (gen + ["--prompt", "x", "--seed", "-1"], ["seed", "from 0 to"]),
        (["data", "synth", "--out", "s.txt", "--depth", "1000"],
         ["--depth", "1000", "nodes on average", "at most 23"]),
        (["data", "synth", "--out", "s.txt", "--depth", "200"], ["--depth", "200", "at most 23"]),
        (["data", "synth", "--out", "s.txt", "--depth", "20", "--n", "100000"],
         ["100,000 examples", "lower n (--n) or max_depth (--depth)"]),
        (["data", "synth", "--out", str(w / "adir")], ["is a directory", "arith.txt"]),
        (tt + ["--source", "hello.txt", "--pattern", "gpt5", "--out", "t1.json"],
         ["unknown split pattern name 'gpt5'", "gpt2, gpt4", "regex"]),
        (tt + ["--source", "hello.txt", "--pattern", r"\d+", "--out", "t2.json"],
         ["matches nothing", "24 characters", "'gpt4'"]),
        (tt + ["--source", "empty.txt", "blank.txt", "--out", "t3.json"],
         ["holds no text", "2 document(s) are empty or only whitespace", "--source"]),
        # A failed prepare must not leave its --out (nor the parent it created) behind.
        (["data", "prepare", "--quiet", "--source", "empty.txt", "--tokenizer", str(tok_file),
          "--out", "new/prep"], ["holds no text", "--source"]),
        (["tokenizer", "encode", "--tokenizer", str(tok_file), "--text", "a<|endoftext|>"],
         ["'<|endoftext|>' at offset 1", "--allow-special"]),
        (["quantize", "--model", str(model), "--out", "q", "--bits", "8", "--skip", "bogus"],
         ["['bogus'] matches no Linear layer", "lm_head"]),
        (["plot", str(w / "corrupt"), "--out", "p1.png"], ["corrupt", "none of its lines"]),
        (["plot", str(w / "empty-log"), "--out", "p2.png"], ["is empty", "not logged a step"]),
        (["plot", str(w / "adir"), "--out", "p3.png"], ["has no log.jsonl"]),
        (["plot", str(w / "hello.txt"), "--out", "p4.png"], ["is a file, not a directory"]),
        (["eval", "--model", str(model), "--data", str(w / "adir")], ["is a directory, not a file"]),
        (gen + ["--prompt", ""], ["the prompt is empty", "--prompt"]),
        (gen + ["--prompt", "x" * 200], ["the prompt has", f"context is {BLOCK}", "shorten --prompt"]),
        (["sample-compare", "--model", str(model), "--prompt", ""], ["the prompt is empty"]),
        (["generate", "--model", str(no_tok), "--prompt", "hi"],
         ["has no tokenizer.json", "copy the tokenizer"]),
    ]


def test_careless_input_is_one_line_naming_the_fix(model_dir, tmp_path):
    tok_file = model_dir / "tokenizer.json"
    work = tmp_path / "work"
    work.mkdir()
    cases = error_cases(model_dir, tok_file, work)
    before = sorted(p.name for p in work.iterdir())
    results = run_cases([argv for argv, _ in cases], work)
    for (argv, fragments), (code, err, _) in zip(cases, results):
        assert "Traceback" not in err, (argv, err)
        assert code == 2, (argv, code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmstack: error:"), (argv, err)
        for fragment in fragments:
            assert fragment in err, (argv, fragment, err)
        assert "prompt 0" not in err and "allowed_special" not in err and "token ids" not in err
    assert sorted(p.name for p in work.iterdir()) == before  # no file or directory left behind


def test_small_corpus_warns_with_the_size_reached(tmp_path):
    (tmp_path / "small.txt").write_text("hello hello world")  # "hello" repeats: 4 merges
    [(code, err, out)] = run_cases([["tokenizer", "train", "--quiet", "--source", "small.txt",
                                     "--vocab-size", "1000", "--out", "t.json"]], tmp_path)
    assert code == 0 and "Traceback" not in err
    assert "lmstack: warning: the corpus is too small for vocab_size 1000" in err
    assert "after 4 merges, so the tokenizer has 263 ids" in err and "vocab_size=263" in out
    # A corpus that fills the vocabulary gets no warning (the warning is not printed always).
    [(code, err, _)] = run_cases([["tokenizer", "train", "--quiet", "--source", "small.txt",
                                   "--vocab-size", "260", "--out", "t.json"]], tmp_path)
    assert code == 0 and "warning" not in err


def test_synth_at_the_depth_limit_still_works(tmp_path):
    """The bound refuses what would not finish, not what works: the deepest depth it allows
    writes its file (one real process, as a user runs it)."""
    proc = subprocess.run([sys.executable, "-m", "lmstack.cli", "data", "synth", "--out", "s.txt",
                           "--depth", "23", "--n", "20"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "s.txt").read_text().splitlines()
    assert len(lines) == 20 and all("=" in line for line in lines)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").exists() or (os.cpu_count() or 1) < 2,
                    reason="needs /proc to see the workers, and 2 CPUs for there to be workers")
def test_ctrl_c_during_tokenizer_train_is_quiet(tmp_path):
    """Ctrl-C reaches the whole process group (the parent and its counting workers): the parent
    says "interrupted" and exits 130 (128 + SIGINT, what a shell reports for Ctrl-C, so a script
    stops too); the workers print nothing."""
    out = tmp_path / "tok.json"
    proc = subprocess.Popen([sys.executable, "-m", "lmstack.cli", "tokenizer", "train", "--source",
                             "stdlib", "--vocab-size", "4096", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(_children(proc.pid)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # wait for the pool of counting workers
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)  # let the workers settle into waiting for (or counting) a batch
        os.killpg(proc.pid, signal.SIGINT)
        # Without the fix the workers die printing tracebacks and the pool hangs: a timeout here.
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_serve_on_a_busy_port_is_one_line_before_loading(model_dir, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "lmstack.cli", "serve", "--model",
                               str(model_dir), "--port", str(port)], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "serving" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lmstack: error: port {port} is already in use (another server listens there); pick a "
        "free one with --port"]
