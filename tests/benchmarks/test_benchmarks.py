"""Smoke tests of benchmarks/shakespeare.py and benchmarks/arithmetic.py on tiny inputs (they
need neither tiny Shakespeare nor minutes of training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmstack.data.loader import TokenLoader
from lmstack.data.synthetic import split_example
from lmstack.models import NGramConfig, NGramLM
from tests.benchmarks import load


@pytest.fixture(scope="module")
def shakespeare():
    return load("shakespeare")


@pytest.fixture(scope="module")
def arithmetic():
    return load("arithmetic")


TEXT = "".join(f"ROMEO {i}:\nBut soft, what light through yonder window breaks?\n\n"
               for i in range(300))


def test_shakespeare_split_is_nanogpts_and_the_loader_reads_it(shakespeare, tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT)
    data = shakespeare.prepare(path, tmp_path / "data")
    n = int(len(TEXT) * 0.9)
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    assert bytes(train.astype(np.uint8)) == TEXT[:n].encode()
    assert bytes(val.astype(np.uint8)) == TEXT[n:].encode()
    loader = TokenLoader(data, "val", batch_size=2, block_size=16,
                         tokenizer=shakespeare.byte_tokenizer())
    x, y = loader.next_batch()
    assert (x[:, 1:] == y[:, :-1]).all()
    assert shakespeare.prepare(path, tmp_path / "data") == data  # prepared already: reused


def test_shakespeare_run_reports_a_row(shakespeare, tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT)
    data = shakespeare.prepare(path, tmp_path / "data")
    tiny = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "steps=4", "eval_every=2",
            "eval_batches=2", "batch_size=4", "threads=1"]
    run = shakespeare.run_mode("best", data, tmp_path, shakespeare.BEST + tiny)
    assert run.steps <= 4 and math.isfinite(run.val_loss) and run.tokens_s > 0
    assert run.val_loss < math.log(257) + 0.5
    assert "lmstack best" in shakespeare.table([run])


def test_arithmetic_holds_out_unseen_expressions(arithmetic):
    train, test = arithmetic.make_splits(600, 50, depth=2)
    assert len(test) == 50 and len(train) > 100
    assert not {split_example(t)[0] for t in test} & {split_example(t)[0] for t in train}
    assert all(eval(split_example(t)[0]) == split_example(t)[1] for t in train[:50])


def test_exact_match_of_a_model_that_memorized_the_test(arithmetic):
    """An 8-gram fit on the test examples themselves (add-k with a tiny k: the longest seen
    context decides) answers (almost) all of them."""
    _, test = arithmetic.make_splits(400, 40, depth=1)
    tok = arithmetic.byte_tokenizer()
    ids = [i for t in test for i in (tok.eot_id, *tok.encode_ordinary(t))] + [tok.eot_id]
    ngram = NGramLM(NGramConfig(vocab_size=tok.vocab_size, order=8, smoothing="add_k",
                                    k=1e-3)).fit(np.array(ids))
    accuracy, by_depth = arithmetic.exact_match(ngram, tok, test)
    assert accuracy > 0.9 and set(by_depth) <= {0, 1}


def test_decode_benchmark_copies_weights_to_hf_exactly(monkeypatch):
    pytest.importorskip("transformers")
    decode = load("decode")
    monkeypatch.setitem(decode.SHAPES, "test", (2, 2, 32, 61))
    ours = decode.build_ours("test")
    hf = decode.build_hf(ours)
    assert decode.check_logits(ours, hf, seq_len=12) < 1e-4
    assert decode.weight_bytes(ours) == 4 * (sum(p.numel() for p in ours.parameters()) - 1024 * 32)
    decode.matmul_floor(hf, 1)()  # finds HF's Conv1D layers and feeds them the right widths
    t_ours, t_hf, tok_ours, tok_hf, _ = decode.time_decode(ours, hf, [1, 2, 3], 5, repeats=1)
    assert tok_ours == tok_hf and len(tok_ours) == 5
