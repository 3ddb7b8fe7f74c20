"""Preference data: JSONL pairs of a preferred and a dispreferred reply -> token ids with
completion masks -> collated batches of chosen and rejected rows.

Each line is one pair, in one of the layouts preference data sets use:

    {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    {"prompt": [{"role": "user", "content": "2+2="}], "chosen": "4", "rejected": "5"}
    {"prompt": [...messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
    {"chosen": [...whole chat], "rejected": [...whole chat]}   # the prompt: their shared start

A string prompt is the user's message, a string reply the assistant's. With a chat template
(the model's own: lmstack.models.directory.model_chat_template) the conversation is rendered as
SFT renders it (sft_data.py: assistant spans found from what the renderer writes, encoded
segment by segment), and only the completion's assistant spans are marked: earlier assistant
turns in the prompt are context, not the reply being judged. Without a template a string pair
is prompt + reply + eos, as SFT's plain pairs are.

A pair whose chosen and rejected replies are the same teaches nothing (DPO's loss is log 2
whatever the model does) and is an error naming its line.

`collate_pairs` lays B pairs out as 2B rows, [chosen_0..chosen_B-1, rejected_0..rejected_B-1],
right-padded: `input_ids` the whole sequence, `labels[t]` the next token where it is a
completion token (else -100; logprobs.py), `lengths` the tokens of each row (the reward model
reads the hidden state at lengths - 1). The layout follows trl's concatenated forward: one
forward pass scores both halves.

Run the tests: `pytest lmstack/posttrain/preference.py --doctest-modules tests/posttrain/test_preference_data.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmstack.errors import ConfigError, DataError
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.sft_data import (
    Example,
    assistant_spans,
    check_no_specials,
    encode_segments,
    read_jsonl,
    segments,
    tokenize_record,
)
from lmstack.tokenizer.chat_template import ChatTemplate, validate_messages

Messages = list[dict]
Part = str | Messages


@dataclass(frozen=True)
class PreferencePair:
    """One tokenized pair: the chosen and the rejected sequence, each prompt + reply."""

    chosen: Example
    rejected: Example
    source: str = ""


# ---- reading and checking ----------------------------------------------------------------

def read_preferences(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """("FILE:LINE", checked record) for each non-blank line of a JSONL file of pairs."""
    return read_jsonl(path, check_preference, "preference data file",
                      'a JSONL file of {"prompt", "chosen", "rejected"} pairs')


def check_preference(record: Any, where: str = "") -> dict:
    """The record as {"prompt", "chosen", "rejected"}: a string prompt with string replies, or
    message lists throughout (the prompt split off a pair of whole chats). DataError otherwise.

    >>> check_preference({"prompt": "2+2=", "chosen": "4", "rejected": "5"}, "x:1")
    {'prompt': '2+2=', 'chosen': '4', 'rejected': '5'}
    >>> chat = lambda reply: [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": reply}]
    >>> check_preference({"chosen": chat("Hello!"), "rejected": chat("Go away.")}, "x:2")["prompt"]
    [{'role': 'user', 'content': 'Hi'}]
    >>> check_preference({"prompt": "Hi", "chosen": "Yo", "rejected": "Yo"}, "x:3")
    Traceback (most recent call last):
    ...
    lmstack.errors.DataError: x:3: chosen and rejected are identical; a pair teaches nothing unless the replies differ: fix or drop the line
    >>> check_preference({"prompt": "Hi", "chosen": "Yo"}, "x:4")
    Traceback (most recent call last):
    ...
    lmstack.errors.DataError: x:4: a preference pair needs "rejected"; got the keys ['chosen', 'prompt']
    """
    at = f"{where}: " if where else ""
    if not isinstance(record, dict):
        raise DataError(f'{at}expected an object {{"prompt", "chosen", "rejected"}}, got '
                        f"{type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if "prompt" not in record and not missing and not all(isinstance(record[k], list)
                                                          for k in ("chosen", "rejected")):
        missing = ["prompt"]  # only whole chats carry their prompt inside them
    if missing:
        raise DataError(f"{at}a preference pair needs {', '.join(map(json.dumps, missing))}; "
                        f"got the keys {sorted(record)}")
    if "prompt" in record:
        prompt, chosen, rejected = (record[k] for k in ("prompt", "chosen", "rejected"))
    else:
        prompt, chosen, rejected = _split_shared_prompt(record["chosen"], record["rejected"], at)
    out = _as_one_layout(prompt, chosen, rejected, at)
    if out["chosen"] == out["rejected"]:
        raise DataError(f"{at}chosen and rejected are identical; a pair teaches nothing unless "
                        "the replies differ: fix or drop the line")
    return out


def _messages(value: Any, name: str, at: str) -> Messages:
    try:
        return validate_messages(value)
    except ConfigError as e:
        raise DataError(f"{at}{name}: {e}") from None


def _split_shared_prompt(chosen: Any, rejected: Any, at: str) -> tuple[Messages, Messages, Messages]:
    """Two whole chats -> (their longest shared start, the chosen rest, the rejected rest)."""
    chosen, rejected = _messages(chosen, "chosen", at), _messages(rejected, "rejected", at)
    if chosen == rejected:
        raise DataError(f"{at}chosen and rejected are identical; a pair teaches nothing unless "
                        "the replies differ: fix or drop the line")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise DataError(f"{at}chosen and rejected share no first message, so there is no common "
                        'prompt; give it as "prompt" and only the replies as chosen/rejected')
    return chosen[:n], chosen[n:], rejected[n:]


def _as_one_layout(prompt: Any, chosen: Any, rejected: Any, at: str) -> dict:
    """All strings, or (when any part is a message list) all message lists."""
    parts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for name, value in parts.items():
        if not isinstance(value, (str, list)):
            raise DataError(f"{at}{name} must be a string or a list of messages, got "
                            f"{type(value).__name__}")
    if all(isinstance(v, str) for v in parts.values()):
        return parts
    role = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    out = {}
    for name, value in parts.items():
        if value == [] and name != "prompt":
            raise DataError(f"{at}{name} has no reply after the prompt (it is the shared start "
                            "of both chats); each side needs its own assistant message")
        out[name] = _messages(value if isinstance(value, list) else
                              [{"role": role[name], "content": value}], name, at)
    for name in ("chosen", "rejected"):
        if not any(m["role"] == "assistant" for m in out[name]):
            raise DataError(f"{at}{name} has no assistant message; the reply being judged is "
                            "the assistant's")
    return out


# ---- tokenizing --------------------------------------------------------------------------

def _as_chat(record: dict) -> dict:
    """A string pair as messages: the prompt the user's, each reply the assistant's."""
    if isinstance(record["prompt"], list):
        return record
    return {"prompt": [{"role": "user", "content": record["prompt"]}],
            "chosen": [{"role": "assistant", "content": record["chosen"]}],
            "rejected": [{"role": "assistant", "content": record["rejected"]}]}


def completion_example(tokenizer: Any, template: ChatTemplate, prompt: Messages,
                       completion: Messages, where: str = "") -> Example:
    """prompt + completion rendered and encoded; only the completion's assistant spans trained."""
    messages = prompt + completion
    check_no_specials(tokenizer, messages, where)
    text, spans = assistant_spans(template, messages, where)
    in_prompt = sum(m["role"] == "assistant" for m in prompt)  # their spans come first
    return encode_segments(tokenizer, segments(text, spans[in_prompt:]), where)


def tokenize_pair(record: dict, tokenizer: Any, template: ChatTemplate | None = None,
                  where: str = "") -> PreferencePair:
    """A checked record (check_preference) as a PreferencePair."""
    if template is None:
        if isinstance(record["prompt"], list):
            raise ConfigError("chat preference records need a chat template; pass the model's "
                              "(lmstack.models.directory.model_chat_template) or ChatTemplate()")
        sides = [tokenize_record({"prompt": record["prompt"], "completion": record[k]}, tokenizer,
                                 None, where) for k in ("chosen", "rejected")]
    else:
        chat = _as_chat(record)
        sides = [completion_example(tokenizer, template, chat["prompt"], chat[k], where)
                 for k in ("chosen", "rejected")]
    return PreferencePair(sides[0], sides[1], where)


def load_preference_pairs(path: str | os.PathLike, tokenizer: Any,
                          template: ChatTemplate | None) -> list[PreferencePair]:
    """Every pair of a JSONL file, tokenized (errors name the file and line)."""
    pairs = [tokenize_pair(record, tokenizer, template, where)
             for where, record in read_preferences(path)]
    if not pairs:
        raise DataError(f"{path} holds no preference pairs; it is empty")
    return pairs


# ---- truncation and batches --------------------------------------------------------------

@dataclass
class PairTruncation:
    """What truncation did: pairs kept whole, cut, and dropped (with their lines)."""

    kept: int = 0
    cut: int = 0
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.kept + self.cut} pairs kept ({self.cut} cut from the right), "
                f"{len(self.dropped)} dropped (a side lost its reply, or the two became equal)")


def truncate_pairs(pairs: Sequence[PreferencePair], max_len: int
                   ) -> tuple[list[PreferencePair], PairTruncation]:
    """Cut each side from the right to max_len tokens (the model's context); drop a pair when a
    side has no completion token left or both sides became the same.

    >>> a = Example([1, 2, 3, 4], [False, False, True, True])
    >>> b = Example([1, 2, 3, 5], [False, False, True, True])
    >>> kept, report = truncate_pairs([PreferencePair(a, b, "x:1")], 3)  # both cut to [1, 2, 3]
    >>> kept, report.dropped
    ([], ['x:1'])
    """
    if max_len < 2:
        raise ConfigError(f"max_len must be at least 2 (a prompt token and a reply token), got {max_len}")
    kept, report = [], PairTruncation()

    def cut(e: Example) -> Example:
        return Example(e.ids[:max_len], e.trained[:max_len], e.source)

    for pair in pairs:
        c, r = cut(pair.chosen), cut(pair.rejected)
        if not any(c.trained[1:]) or not any(r.trained[1:]) or c.ids == r.ids:
            report.dropped.append(pair.source)
            continue
        was_cut = (len(c.ids), len(r.ids)) != (len(pair.chosen.ids), len(pair.rejected.ids))
        report.cut += was_cut
        report.kept += not was_cut
        kept.append(PreferencePair(c, r, pair.source))
    return kept, report


def row_labels(example: Example) -> list[int]:
    """Labels over the whole sequence: labels[t] = ids[t + 1] where that token is trained,
    else -100; the last position has no next token.

    >>> row_labels(Example([5, 6, 7, 8], [False, False, True, True]))
    [-100, 7, 8, -100]
    """
    return example.inputs_and_labels()[1] + [IGNORE_INDEX]


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int = 0,
                  max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, lengths): (2B, T), (2B, T), (2B,) long tensors, chosen rows first.
    T is the longest sequence, or `max_len` when given (fixed shapes).

    >>> pair = PreferencePair(Example([1, 2, 3], [0, 1, 1]), Example([1, 4], [0, 1]))
    >>> ids, labels, lengths = collate_pairs([pair], pad_id=0)
    >>> ids.tolist(), labels.tolist(), lengths.tolist()
    ([[1, 2, 3], [1, 4, 0]], [[2, 3, -100], [4, -100, -100]], [3, 2])
    """
    if not pairs:
        raise DataError("an empty batch: there are no preference pairs to collate")
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    longest = max(len(e.ids) for e in rows)
    t = longest if max_len is None else max_len
    if longest > t:
        raise ConfigError(f"a pair has {longest} tokens, more than max_len={t}; truncate_pairs first")
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(rows):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        labels[i, :len(e.ids)] = torch.tensor(row_labels(e))
    lengths = torch.tensor([len(e.ids) for e in rows], dtype=torch.long)
    return ids, labels, lengths
