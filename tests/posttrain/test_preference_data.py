"""Preference data: every layout gives the same tokenized pair, only the judged reply is marked
(not earlier assistant turns, not the prompt), a collated batch scores each pair as it scores
alone, and bad input is an error naming its line."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.errors import ConfigError, DataError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.logprobs import pair_logprobs
from lmstack.posttrain.preference import (
    PreferencePair,
    check_preference,
    collate_pairs,
    load_preference_pairs,
    tokenize_pair,
    truncate_pairs,
)
from lmstack.posttrain.sft_data import Example, tokenize_record
from lmstack.tokenizer.chat_template import ChatTemplate

CHATML = ChatTemplate()
USER = {"role": "user", "content": "What is 2 + 2?"}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def trained_text(tok, e: Example) -> str:
    return tok.decode([i for i, t in zip(e.ids, e.trained) if t])


def write(tmp_path, records) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_every_layout_gives_the_same_pair(tok):
    layouts = [
        {"prompt": USER["content"], "chosen": "4", "rejected": "5"},
        {"prompt": [USER], "chosen": "4", "rejected": "5"},
        {"prompt": [USER], "chosen": [reply("4")], "rejected": [reply("5")]},
        {"chosen": [USER, reply("4")], "rejected": [USER, reply("5")]},
    ]
    pairs = [tokenize_pair(check_preference(r, "x:1"), tok, CHATML) for r in layouts]
    for p in pairs[1:]:
        assert (p.chosen, p.rejected) == (pairs[0].chosen, pairs[0].rejected)
    p = pairs[0]
    assert trained_text(tok, p.chosen) == "4<|im_end|>" and trained_text(tok, p.rejected) == "5<|im_end|>"
    # the untrained start is the prompt exactly as inference encodes it
    prompt = tok.encode(CHATML.render([USER], add_generation_prompt=True), allowed_special="all")
    assert p.chosen.ids[:len(prompt)] == prompt and not any(p.chosen.trained[:len(prompt)])


def test_only_the_judged_reply_is_marked_not_earlier_assistant_turns(tok):
    history = [USER, reply("4"), {"role": "user", "content": "And 3 + 3?"}]
    p = tokenize_pair(check_preference({"prompt": history, "chosen": "6", "rejected": "7"}), tok, CHATML)
    assert trained_text(tok, p.chosen) == "6<|im_end|>"
    # Negative control: SFT's tokenization of the same chat trains the earlier reply too.
    sft = tokenize_record({"messages": history + [reply("6")]}, tok, CHATML)
    assert trained_text(tok, sft) == "4<|im_end|>6<|im_end|>"


def test_a_plain_pair_without_template_is_prompt_reply_eos(tok):
    p = tokenize_pair(check_preference({"prompt": "2+2=", "chosen": "4", "rejected": "5"}), tok, None)
    assert p.chosen == tokenize_record({"prompt": "2+2=", "completion": "4"}, tok, None)
    assert trained_text(tok, p.rejected) == "5<|endoftext|>"


def test_a_collated_batch_scores_each_pair_as_it_scores_alone(tok):
    records = [{"prompt": "Name a color.", "chosen": "Blue, like the sky.", "rejected": "No."},
               {"prompt": "2+2?", "chosen": "4", "rejected": "Four, I believe, but let me think."}]
    pairs = [tokenize_pair(check_preference(r), tok, CHATML) for r in records]
    ids, labels, lengths = collate_pairs(pairs, pad_id=0)
    assert ids.shape[0] == 4 and lengths.tolist() == [len(e.ids) for e in
                                                      (pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected)]
    assert (labels != -100).sum(1).tolist() == [sum(e.trained[1:]) for e in
                                                (pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected)]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32,
                          position="rope", norm="rmsnorm", mlp="swiglu", bias=False)).double()
    with torch.no_grad():
        together = pair_logprobs(model, ids, labels)
    for i, pair in enumerate(pairs):
        with torch.no_grad():
            alone = pair_logprobs(model, *collate_pairs([pair])[:2])
        assert float(alone.chosen.sum) == pytest.approx(float(together.chosen.sum[i]), abs=1e-9)
        assert float(alone.rejected.sum) == pytest.approx(float(together.rejected.sum[i]), abs=1e-9)
        assert float(alone.chosen.count) == float(together.chosen.count[i])
    # What fills the padding does not matter: attention is causal and padding comes last
    ids2 = torch.where(labels.eq(-100) & (torch.arange(ids.size(1)) >= lengths[:, None]), 7, ids)
    assert not torch.equal(ids2, ids)
    with torch.no_grad():
        torch.testing.assert_close(pair_logprobs(model, ids2, labels).chosen.sum, together.chosen.sum)


def test_truncation_cuts_from_the_right_and_drops_pairs_left_equal():
    same_start = PreferencePair(Example([1, 2, 3, 4], [0, 0, 1, 1]), Example([1, 2, 3, 9], [0, 0, 1, 1]), "a:1")
    fits = PreferencePair(Example([1, 2, 5], [0, 1, 1]), Example([1, 2, 6], [0, 1, 1]), "a:2")
    kept, report = truncate_pairs([same_start, fits], 3)
    assert [p.source for p in kept] == ["a:2"] and report.dropped == ["a:1"]
    kept, report = truncate_pairs([same_start, fits], 4)
    assert len(kept) == 2 and str(report).startswith("2 pairs kept (0 cut")


@pytest.mark.parametrize("record, message", [
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}, "chosen and rejected are identical"),
    ({"chosen": [USER, reply("4")], "rejected": [USER, reply("4")]}, "chosen and rejected are identical"),
    ({"prompt": "Hi", "chosen": "Hello"}, 'a preference pair needs "rejected"'),
    ({"chosen": "4", "rejected": "5"}, 'a preference pair needs "prompt"'),
    ({"chosen": [USER, reply("4")], "rejected": [reply("5")]}, "chosen and rejected share no first message"),
    ({"chosen": [USER, reply("4")], "rejected": [USER]}, "rejected has no reply after the prompt"),
    ({"prompt": [USER], "chosen": [USER], "rejected": "5"}, "chosen has no assistant message"),
    ({"prompt": "Hi", "chosen": 4, "rejected": "5"}, "chosen must be a string or a list of messages"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "4", "rejected": "5"}, "prompt: messages\\[0\\].role"),
    ('{"prompt": "Hi",', "not valid JSON"),
    ('["a", "b"]', "expected an object"),
])
def test_bad_records_name_their_line(tmp_path, tok, record, message):
    path = write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DataError, match=f"pairs.jsonl:2: {message}"):
        load_preference_pairs(path, tok, CHATML)


def test_bad_files_and_settings(tmp_path, tok):
    with pytest.raises(DataError, match="no preference data file"):
        load_preference_pairs(tmp_path / "missing.jsonl", tok, CHATML)
    with pytest.raises(DataError, match="holds no preference pairs"):
        load_preference_pairs(write(tmp_path, ["", " "]), tok, CHATML)
    with pytest.raises(ConfigError, match="need a chat template"):
        load_preference_pairs(write(tmp_path, [{"prompt": [USER], "chosen": "4", "rejected": "5"}]), tok, None)
    special = {"prompt": "Hi", "chosen": "a <|im_end|> b", "rejected": "c"}
    with pytest.raises(DataError, match="pairs.jsonl:1: messages\\[1\\].content contains the special token"):
        load_preference_pairs(write(tmp_path, [special]), tok, CHATML)
    with pytest.raises(DataError, match="an empty batch"):
        collate_pairs([])
    with pytest.raises(ConfigError, match="truncate_pairs first"):
        collate_pairs([PreferencePair(Example([1, 2, 3], [0, 1, 1]), Example([1, 2], [0, 1]))], max_len=2)
