"""Post-training under torchrun: two CPU processes (gloo) train like one with the same global batch.

The loaders deal rank r of 2 the rows r·B .. r·B + B − 1 of each 2B-row slice of the seeded order,
so two ranks with batch_size B see what one process with 2B sees; the loop divides the summed
loss by the global count (trained tokens for SFT, pairs for DPO), not by each rank's own, so
the averaged gradients are one process's. Only the order of float additions differs: losses and
weights agree to a tolerance, not bitwise. A rank that divided by its own token count would
weigh its rows by how many answer tokens they happen to hold, and fail this test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from lmstack.cli import main
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import save_model
from lmstack.train.checkpoint import read_log
from tests.train.conftest import PYTHON, REPO, free_port

SCRIPT = "import sys\nfrom lmstack.cli import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A small Llama-style model, 80 addition chats of uneven answer lengths, and 40 pairs."""
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4,
                          n_kv_head=2, n_embd=64, position="rope", norm="rmsnorm", mlp="swiglu",
                          bias=False, dropout=0.0))
    save_model(root / "base", model)
    tok.save(root / "base" / "tokenizer.json")
    rng = random.Random(0)
    chats, pairs = [], []
    for _ in range(80):
        a, b = rng.randint(0, 999), rng.randint(0, 9)
        answer = str(a + b) + " is the sum" * rng.randint(0, 3)  # answers of 1 to ~10 tokens
        chats.append({"messages": [{"role": "user", "content": f"{a} plus {b}?"},
                                   {"role": "assistant", "content": answer}]})
        pairs.append({"prompt": f"{a} plus {b}?", "chosen": str(a + b), "rejected": str(a + b + 1)})
    (root / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:40]))
    return root


def argv(base, command: str, data: str, out, batch: int, *settings: str) -> list[str]:
    return [command, "--model", str(base / "base"), "--data", str(base / data), "--out", str(out),
            "--set", f"batch_size={batch}", "block_size=64", "steps=4", "eval_every=0",
            "save_every=4", "progress=false", "log_every=1", "pack=false",
            "schedule.warmup_steps=0", "optim.grad_clip=0", *settings]


def torchrun(tmp_path, args: list[str]) -> None:
    """`lmstack ARGS` under `torchrun --nproc_per_node 2`; fail with its output if it fails."""
    script = tmp_path / "run_cli.py"
    script.write_text(SCRIPT)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(script), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def weights(out) -> dict[str, torch.Tensor]:
    name = "model.safetensors" if (out / "model.safetensors").exists() else "adapter_model.safetensors"
    return load_file(out / name)


def assert_same_run(one, two) -> None:
    losses = [[r["loss"] for r in read_log(out)] for out in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_on_two_ranks_is_one_process_with_their_batch(base, tmp_path, method):
    settings = (f"peft.method={method}", "schedule.lr=3e-3")
    assert main(argv(base, "sft", "chats.jsonl", tmp_path / "one", 4, *settings)) == 0
    torchrun(tmp_path, argv(base, "sft", "chats.jsonl", tmp_path / "two", 2, *settings))
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_dpo_on_two_ranks_is_one_process_with_their_batch(base, tmp_path):
    settings = ("peft.method=lora", "schedule.lr=1e-2")
    assert main(argv(base, "dpo", "pairs.jsonl", tmp_path / "one", 4, *settings)) == 0
    torchrun(tmp_path, argv(base, "dpo", "pairs.jsonl", tmp_path / "two", 2, *settings))
    assert_same_run(tmp_path / "one", tmp_path / "two")
