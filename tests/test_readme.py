"""Every shell command of README.md, in order, run as a user would: a README that drifts from
the code fails here.

The commands run through bash in a fresh directory (the user's working directory), with the
venv's `bin/` first on PATH and HOME in the test's directory, on a small corpus of stdlib files.
They run as the README writes them; only the settings that make them small are appended, from
RUN below: argparse lets a later flag override an earlier one (`--source corpus` after
`--source stdlib`) and `train --set` accumulates, so the README's text is never edited. The
files a README user brings (my_docs/, notes.jsonl, held_out.txt, ~/models/...) are made first.

A command that cannot run here as written is in ELSEWHERE, by its full text, with the reason and
the check made instead. A command in neither fails the test, so a new README line is never
skipped silently; an ELSEWHERE entry the README no longer has fails it too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import STDLIB

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/: lmstack, torchrun
SHELL_BLOCKS = {"bash", "sh", "shell"}
OTHER_BLOCKS = {"python"}  # compiled (a syntax check); tests/ exercise each call it shows

TRAIN_SMALL = "--set steps=3 eval_batches=2 batch_size=4 progress=false"

# README command start -> what is appended to make it small (the longest matching start wins).
RUN = {
    "lmstack --help": "",
    "lmstack quickstart": "--source corpus --vocab-size 400 --steps 3 --quiet",
    # 1100: the README decodes id 1024 with this tokenizer
    "lmstack tokenizer train --source stdlib": "--source corpus --vocab-size 1100 --quiet",
    "lmstack tokenizer train --source my_docs/": "--vocab-size 300 --quiet",
    "lmstack tokenizer encode": "",
    "lmstack tokenizer decode": "",
    "lmstack tokenizer inspect": "",
    "lmstack tokenizer export-hf": "",
    "lmstack data prepare": "--source corpus --workers 1 --quiet",
    "lmstack data synth": "--n 200",
    "lmstack train": TRAIN_SMALL,
    "torchrun --nproc_per_node 2 -m lmstack.cli train": TRAIN_SMALL,
    "lmstack eval": "",
    "lmstack eval --model smollm2": "--block-size 256 --stride 256",  # a 30-layer model: short windows
    "lmstack models": "",
    "lmstack generate --model smollm2 --prompt \"A US phone number: \"": "--max-new-tokens 20",
    "lmstack generate --model smollm2 --prompt 'Paris as JSON": "--max-new-tokens 30",
    "lmstack generate --model smollm2 --prompt \"Person: \"": "--max-new-tokens 60 --seed 0",
    "lmstack plot": "",
    "lmstack generate": "--max-new-tokens 8",
    "lmstack sample-compare": "--max-new-tokens 6",
    "lmstack convert": "",
    "lmstack quantize": "",
    "lmstack train-heads": "--steps 3 --batch-size 2 --quiet",
    "lmstack chat": "--max-new-tokens 6",  # stdin: CHAT_INPUT
}
CHAT_INPUT = "hello\n/show\n/quit\n"

SERVE = "lmstack serve --model runs/quickstart"
SERVE_WITH_KEY = "LMSTACK_API_KEY=sk-local lmstack serve --model runs/quickstart --max-batch 8 --port 9000"
CURL = ("curl localhost:8000/v1/completions -H 'content-type: application/json' "
        "-d '{\"prompt\": \"import\", \"max_tokens\": 16}'")
# Full README command -> (why it cannot run here as written, how it is checked instead).
ELSEWHERE = {
    "make run": ("installs the venv and runs the full quickstart (~6 min); the `lmstack "
                 "quickstart` line runs the same command small", "`make -n run` runs it"),
    "make test": ("is the whole suite, this test included", "`make -n test` runs pytest"),
    SERVE: ("serves until Ctrl-C, on port 8000 which may be taken",
            "started on a free port (--port appended), the curl line sent to it, then Ctrl-C"),
    SERVE_WITH_KEY: ("serves until Ctrl-C", "started on a free port: 401 without the key, 200 "
                                            "with it, then Ctrl-C"),
    CURL: ("needs the server of the serve line", "sent to that server, its port substituted"),
}


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's command and its trailing comment (a # in quotes or inside a word is not one).

    >>> split_comment('lmstack x --text "a # b" --stop "\\\\n"   # note')
    ('lmstack x --text "a # b" --stop "\\\\n"', '# note')
    >>> split_comment("echo a#b")
    ('echo a#b', '')
    """
    quote, prev = None, " "
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote and prev != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i].rstrip(), line[i:]
        prev = ch
    return line.rstrip(), ""


def readme_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block, in order; continued lines (a trailing \\) joined.

    >>> readme_blocks("x\\n```bash\\na \\\\\\n  b\\n# c\\n```\\n")
    [('bash', ['a b', '# c'])]
    """
    blocks = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        lines = re.sub(r"\\\n\s*", "", body).splitlines()
        blocks.append((lang, lines))
    return blocks


def readme_commands() -> list[str]:
    """Every command line of README.md's shell blocks, comments kept; other blocks checked."""
    commands = []
    for lang, lines in readme_blocks((ROOT / "README.md").read_text(encoding="utf-8")):
        if lang in OTHER_BLOCKS:
            compile("\n".join(lines), "README.md", "exec")
            continue
        assert lang in SHELL_BLOCKS, f"README.md has a ```{lang} block tests/test_readme.py does not know"
        commands += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return commands


def plan(command: str) -> str | None:
    """What runs for a README command: it plus its small settings; None when in ELSEWHERE."""
    code, _ = split_comment(command)
    if code in ELSEWHERE:
        return None
    starts = [s for s in RUN if code == s or code.startswith(s + " ")]
    assert starts, (f"README command not known to tests/test_readme.py: {code!r}; add its start to "
                    "RUN (with the small settings it needs) or the command to ELSEWHERE (with why)")
    extra = RUN[max(starts, key=len)]
    return f"{code} {extra}".rstrip()


def test_every_command_has_a_plan():
    commands = [split_comment(c)[0] for c in readme_commands()]
    for command in commands:
        plan(command)
    assert not set(ELSEWHERE) - set(commands), "ELSEWHERE lists commands the README no longer has"


# ---- the user's files ----------------------------------------------------------------------


def _user_files(cwd: Path) -> None:
    """The corpus and the files README commands name as the user's own."""
    corpus = cwd / "corpus"
    corpus.mkdir()
    for path in sorted(STDLIB.glob("*.py"))[:60]:
        (corpus / path.name).write_bytes(path.read_bytes())
    docs = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.py"))[:6]]
    (cwd / "my_docs").mkdir()
    (cwd / "my_docs" / "a.md").write_text(docs[0])
    (cwd / "notes.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[1:3]))
    (cwd / "papers").mkdir()
    (cwd / "papers" / "p.txt").write_text(docs[3])
    (cwd / "held_out.txt").write_text(docs[4])
    (cwd / "person.json").write_text(json.dumps({  # the README's --json-schema file
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"]}))
    _hf_models(cwd / "home" / "models", docs)


def _hf_models(models: Path, docs: list[str]) -> None:
    """~/models/SmolLM-135M (a tiny Llama) and ~/models/gpt2 (a tiny GPT-2), random weights,
    each with a byte-level BPE tokenizer.json: what a Hugging Face download leaves."""
    import torch
    transformers = pytest.importorskip("transformers")
    from lmstack.tokenizer import save_hf, train_bpe

    tok = train_bpe(docs, vocab_size=300, progress=False, workers=1)
    torch.manual_seed(0)
    small = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    eot = tok.special_tokens["<|endoftext|>"]
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **small, num_key_value_heads=2, bos_token_id=eot, eos_token_id=eot))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=eot, eos_token_id=eot))
    for name, model in (("SmolLM-135M", llama), ("gpt2", gpt2)):
        model.save_pretrained(models / name)
        save_hf(tok, models / name / "tokenizer.json")


# ---- running them --------------------------------------------------------------------------


def _env(cwd: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(cwd / "home"), **extra}


def _run(line: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=_env(cwd), input=stdin,
                          capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, key: str | None = None) -> int:
    """The status of a small completion request."""
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", headers=headers,
                                 data=json.dumps({"prompt": "import", "max_tokens": 4}).encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _serving(line: str, cwd: Path, check) -> None:
    """Start a serve line on a free port, run `check(port)` against it, then Ctrl-C it."""
    port = _free_port()
    proc = subprocess.Popen(["bash", "-c", f"{line} --port {port}"], cwd=cwd, env=_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: Ctrl-C reaches the server
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"{line!r} exited: {proc.communicate()[1][-2000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except urllib.error.HTTPError:  # a 401/404: it is up
                break
            except OSError:
                assert time.monotonic() < deadline, f"{line!r} did not come up in 120 s"
                time.sleep(0.3)
        check(port)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-3000:]


def _check_elsewhere(command: str, cwd: Path) -> None:
    if command.startswith("make "):
        done = subprocess.run(["make", "-n", command.split()[1]], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        want = "lmstack quickstart" if command == "make run" else "pytest"
        assert done.returncode == 0 and want in done.stdout, done.stdout + done.stderr
    elif command == SERVE:
        def curl(port: int) -> None:
            done = _run(CURL.replace("localhost:8000", f"localhost:{port}"), cwd)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["choices"][0]["text"] is not None, done.stdout
        _serving(SERVE, cwd, curl)
    elif command == SERVE_WITH_KEY:
        def keyed(port: int) -> None:
            assert (_request(port), _request(port, "sk-local")) == (401, 200)
        _serving(SERVE_WITH_KEY, cwd, keyed)
    # CURL: sent by the SERVE check above, which comes first in the README


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    _user_files(tmp_path)
    took = []
    for command in readme_commands():
        line = plan(command)
        start = time.perf_counter()
        if line is None:
            _check_elsewhere(split_comment(command)[0], tmp_path)
            continue
        done = _run(line, tmp_path, CHAT_INPUT if line.startswith("lmstack chat") else "")
        took.append((time.perf_counter() - start, line))
        assert done.returncode == 0 and "Traceback" not in done.stderr, (
            f"README command failed (exit {done.returncode}): {line}\n{done.stderr[-3000:]}")
        if "--medusa" in line or "--draft" in line or "--prompt-lookup" in line:
            if line.startswith("lmstack generate"):
                assert "speculative:" in done.stderr, done.stderr
    for path in ("runs/data/tokenizer.json", "runs/mine/model.safetensors", "runs/lstm/train_state.pt",
                 "runs/ddp/model.safetensors", "runs/draft/model.safetensors", "curves.png",
                 "runs/q4/config.json", "runs/quickstart/medusa_heads.safetensors",
                 "runs/quickstart-hf/config.json", "runs/gpt2/model.safetensors", "tok.json",
                 "runs/hf/tokenizer.json", "runs/arith.txt"):
        assert (tmp_path / path).exists(), path
    print("\n".join(f"{s:6.1f} s  {line}" for s, line in took))
