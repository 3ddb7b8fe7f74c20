"""Perplexity / bits per byte: the sliding window, hand-checked numbers, every model, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError, DataError
from lmstack.eval import evaluate_model_dir, evaluate_text, sliding_windows
from lmstack.eval import perplexity
from lmstack.models import GPTConfig, NGramConfig, NGramLM, RNNConfig, build_model
from lmstack.models.directory import save_model
from lmstack.tokenizer import train_bpe


def gpt(vocab: int, block: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2,
                                 n_embd=32)).eval()


def token_nll(model, ids: list[int]) -> list[float]:
    """Reference: -log p(ids[j] | ids[:j]) from one forward over the whole sequence."""
    x = torch.tensor([ids[:-1]])
    logp = F.log_softmax(model(x).float(), dim=-1)[0]
    return (-logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]).tolist()


# ---- the windows --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.data())
def test_every_position_is_scored_exactly_once(n, block, data):
    stride = data.draw(st.integers(1, block))
    scored = []
    for begin, end, first in sliding_windows(n, block, stride):
        assert 0 <= begin <= first < end <= n and end - begin <= block
        for j in range(first, end):
            # Each token sees all before it, or at least block - stride tokens of context.
            assert j - begin >= min(j, block - stride)
        scored.extend(range(first, end))
    assert scored == list(range(n))


@pytest.mark.parametrize("block, stride", [(4, 5), (4, 0), (0, 1)])
def test_bad_windows_are_refused(block, stride):
    with pytest.raises(ConfigError, match="stride"):
        sliding_windows(10, block, stride)


# ---- the sliding window against references ------------------------------------------------


def test_one_window_is_one_full_forward(eval_tok, held_out):
    text = held_out[:120]
    ids = [eval_tok.eot_id, *eval_tok.encode(text)]
    model = gpt(eval_tok.vocab_size, block=len(ids) + 4)
    results = [evaluate_text(model, eval_tok, text, stride=s) for s in (1, 7, len(ids) + 4)]
    assert results[0] == results[1] == results[2]  # one window, whatever the stride
    ref = token_nll(model, ids)
    assert results[0]["tokens"] == len(ids) - 1
    assert results[0]["loss"] == pytest.approx(math.fsum(ref) / len(ref), rel=1e-6)


def test_stride_one_gives_every_token_its_full_window(eval_tok, held_out):
    text = held_out[:150]
    ids = [eval_tok.eot_id, *eval_tok.encode(text)]
    block = 8
    model = gpt(eval_tok.vocab_size, block=block)
    got = evaluate_text(model, eval_tok, text, block_size=block, stride=1, batch_size=5)
    # Target j (ids[j]) scored from the last `block` inputs ending at ids[j - 1].
    ref = [token_nll(model, ids[max(0, j - block):j + 1])[-1] for j in range(1, len(ids))]
    assert got["loss"] == pytest.approx(math.fsum(ref) / len(ref), rel=1e-5)


def test_stride_equal_to_block_scores_disjoint_chunks(eval_tok, held_out):
    text = held_out[:150]
    ids = [eval_tok.eot_id, *eval_tok.encode(text)]
    block = 8
    model = gpt(eval_tok.vocab_size, block=block)
    got = evaluate_text(model, eval_tok, text, block_size=block, stride=block)
    ref = []
    for start in range(0, len(ids) - 1, block):
        ref += token_nll(model, ids[start:start + block + 1])
    assert got["loss"] == pytest.approx(math.fsum(ref) / len(ref), rel=1e-5)
    # More context per token is a different (here: not the same) number.
    half = evaluate_text(model, eval_tok, text, block_size=block, stride=block // 2)
    assert half["loss"] != got["loss"] and half["tokens"] == got["tokens"]


def test_batching_does_not_change_the_result(eval_tok, held_out):
    model = gpt(eval_tok.vocab_size, block=8)
    one = evaluate_text(model, eval_tok, held_out, stride=3, batch_size=1)
    many = evaluate_text(model, eval_tok, held_out, stride=3, batch_size=16)
    assert one["tokens"] == many["tokens"] and one["bytes"] == many["bytes"]
    assert one["loss"] == pytest.approx(many["loss"], rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_streams_through_its_state(eval_tok, held_out, cell, monkeypatch):
    torch.manual_seed(0)
    model = build_model(RNNConfig(cell=cell, vocab_size=eval_tok.vocab_size, n_embd=16,
                                  hidden_size=16, n_layer=2)).eval()
    ids = [eval_tok.eot_id, *eval_tok.encode(held_out)]
    ref = token_nll(model, ids)
    monkeypatch.setattr(perplexity, "CHUNK", 7)  # many chunks through the cache
    got = evaluate_text(model, eval_tok, held_out)
    assert got["tokens"] == len(ref)
    assert got["loss"] == pytest.approx(math.fsum(ref) / len(ref), rel=1e-5)


def test_trained_ngram_streams_like_its_own_perplexity(eval_tok, held_out, monkeypatch):
    model = NGramLM(NGramConfig(vocab_size=eval_tok.vocab_size, order=3))
    model.fit([eval_tok.encode(t) for t in (held_out[:300], held_out[200:])])
    monkeypatch.setattr(perplexity, "CHUNK", 5)
    got = evaluate_text(model, eval_tok, held_out)
    ids = [eval_tok.eot_id, *eval_tok.encode(held_out)]
    assert got["ppl"] == pytest.approx(model.perplexity([ids]), rel=1e-4)


# ---- hand-checked numbers -----------------------------------------------------------------


def test_uniform_model_has_loss_ln_vocab(eval_tok, held_out):
    V = eval_tok.vocab_size
    got = evaluate_text(NGramLM(NGramConfig(vocab_size=V, order=2)), eval_tok, held_out)
    assert got["loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert got["ppl"] == pytest.approx(V, rel=1e-5)
    assert got["bytes"] == len(held_out.encode("utf-8"))
    assert got["bpb"] == pytest.approx(got["tokens"] * math.log2(V) / got["bytes"], rel=1e-6)


def test_bpb_of_a_counted_unigram_by_hand():
    tok = train_bpe(["ab"], vocab_size=259, progress=False, workers=1)  # bytes + 3 specials
    V = tok.vocab_size
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    model = NGramLM(NGramConfig(vocab_size=V, order=1, smoothing="add_k", k=1.0)).fit([a, a, a, b])
    p = {a: 4 / (4 + V), b: 2 / (4 + V), tok.eot_id: 1 / (4 + V)}  # (count + 1) / (N + V)

    got = evaluate_text(model, tok, "ab")
    nats = -math.log(p[a]) - math.log(p[b])
    assert (got["tokens"], got["bytes"]) == (2, 2)
    assert got["loss"] == pytest.approx(nats / 2, rel=1e-6)
    assert got["bpb"] == pytest.approx(nats / math.log(2) / 2, rel=1e-6)

    # A special token in the text is scored but has no bytes.
    got = evaluate_text(model, tok, "a<|endoftext|>b")
    nats += -math.log(p[tok.eot_id])
    assert (got["tokens"], got["bytes"]) == (3, 2)
    assert got["bpb"] == pytest.approx(nats / math.log(2) / 2, rel=1e-6)


# ---- model directories and errors ---------------------------------------------------------


def test_model_directory_evaluates_like_the_model(eval_tok, held_out, tmp_path):
    model = gpt(eval_tok.vocab_size, block=16)
    d = save_model(tmp_path / "model", model)
    eval_tok.save(d / "tokenizer.json")
    (tmp_path / "held_out.txt").write_text(held_out, encoding="utf-8")
    got = evaluate_model_dir(d, tmp_path / "held_out.txt", stride=8)
    assert got == evaluate_text(model, eval_tok, held_out, stride=8)


def test_errors(eval_tok, held_out, tmp_path):
    text_file = tmp_path / "t.txt"
    text_file.write_text(held_out, encoding="utf-8")
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_model_dir(tmp_path / "nowhere", text_file)
    (tmp_path / "not_a_model").mkdir()
    eval_tok.save(tmp_path / "not_a_model" / "tokenizer.json")
    with pytest.raises(ConfigError, match="not a model directory"):
        evaluate_model_dir(tmp_path / "not_a_model", text_file)
    d = save_model(tmp_path / "model", gpt(eval_tok.vocab_size))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        evaluate_model_dir(d, text_file)
    eval_tok.save(d / "tokenizer.json")
    with pytest.raises(DataError, match="does not exist"):
        evaluate_model_dir(d, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        evaluate_model_dir(d, tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        evaluate_model_dir(d, tmp_path / "latin1.txt")
    model = gpt(eval_tok.vocab_size, block=16)
    with pytest.raises(DataError, match="empty"):
        evaluate_text(model, eval_tok, "")
    with pytest.raises(ConfigError, match="exceeds the model's context 16"):
        evaluate_text(model, eval_tok, held_out, block_size=32)
    with pytest.raises(ConfigError, match="stride"):
        evaluate_text(model, eval_tok, held_out, stride=17)
