"""Supervised fine-tuning data: chat JSONL -> token ids with an assistant-only loss mask ->
packed rows of (input_ids, labels, position_ids, segment_ids).

Each JSONL line is a chat `{"messages": [{"role", "content"}, ...]}` or a pair
`{"prompt": ..., "completion": ...}`. A chat is rendered with the model's own chat template
(`lmstack.models.directory.model_chat_template`; ChatML by default), and the loss covers the
assistant's tokens only. Those are found from what the renderer itself writes, not from a tag in
the template (most stock templates have no `{% generation %}` tag, and a trainer that looks for
one silently trains on nothing):

- the conversation is rendered prefix by prefix: `messages[:i]` with the generation prompt ends
  exactly where assistant message i begins, and `messages[:i+1]` ends after it, so its span of
  characters is known; the span keeps the end-of-turn marker (`<|im_end|>`, `</s>`) and drops
  the layout whitespace after it (the model stops at the marker and never writes that newline);
- the text is encoded segment by segment (untrained, trained, untrained, ...), so every
  token belongs to one segment and the boundaries are exact by construction. The prompt part is
  then encoded exactly as at inference (render with the generation prompt, encode), which the
  encoding of the whole text is not always: a BPE piece can straddle the boundary (test_sft_data
  shows one).

Labels are shifted as the trainer's `(x, y)` are: `labels[t]` is the target for position t,
the next token, or -100 (cross-entropy's ignore index) where that token is not trained. An
example of n tokens fills n - 1 positions. Truncation cuts from the right to `max_len + 1`
tokens and drops an example with no trained target left; packing fills rows of `max_len` first
fit, positions restart at 0 per example, and `block_diagonal_mask` keeps attention inside each.

Packing follows Krell et al. 2021 ("Efficient sequence packing without cross-contamination").
Run the tests: `pytest tests/posttrain/test_sft_data.py lmstack/posttrain/sft_data.py
--doctest-modules`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmstack.errors import ConfigError, DataError
from lmstack.models.protocol import IGNORE_INDEX as IGNORE  # -100: cross-entropy skips it
from lmstack.tokenizer.chat_template import ChatTemplate, validate_messages


@dataclass(frozen=True)
class Example:
    """One tokenized example: ids, which of them are trained, and where it came from."""

    ids: list[int]
    trained: list[bool]
    source: str = ""

    def inputs_and_labels(self) -> tuple[list[int], list[int]]:
        """(ids[:-1], targets): target t is ids[t + 1] where that token is trained, else -100.

        >>> Example([5, 6, 7, 8], [False, False, True, True]).inputs_and_labels()
        ([5, 6, 7], [-100, 7, 8])
        """
        labels = [i if t else IGNORE for i, t in zip(self.ids[1:], self.trained[1:])]
        return self.ids[:-1], labels

    def prompt_ids(self) -> list[int]:
        """The ids before the first trained token: what the model answers from.

        >>> Example([5, 6, 7, 8], [False, False, True, True]).prompt_ids()
        [5, 6]
        """
        return self.ids[:self.trained.index(True)] if True in self.trained else list(self.ids)


# ---- reading -----------------------------------------------------------------------------

def read_jsonl(path: str | os.PathLike, check: Callable[[Any, str], dict] | None = None,
               kind: str = "SFT data file",
               hint: str = "a JSONL file of chats or prompt/completion pairs") -> Iterator[tuple[str, dict]]:
    """("FILE:LINE", record checked by `check`, default `check_record`) for each non-blank
    line; a malformed one is a DataError naming it. preference.py reads its pairs here too."""
    check = check or check_record
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no {kind} at {p}; pass {hint}")
    with p.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            where = f"{p}:{number}"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each "
                                "line must be one JSON object") from None
            yield where, check(record, where)


def check_record(record: Any, where: str) -> dict:
    """A record with validated `messages`, or a prompt/completion pair of strings.

    >>> check_record({"prompt": "2+2=", "completion": "4"}, "x:1")
    {'prompt': '2+2=', 'completion': '4'}
    >>> check_record({"messages": [{"role": "bot", "content": "hi"}]}, "x:3")
    Traceback (most recent call last):
    ...
    lmstack.errors.DataError: x:3: messages[0].role must be one of system, user, assistant, tool, developer; got 'bot'
    """
    if isinstance(record, dict) and "messages" in record:
        try:
            return {"messages": validate_messages(record["messages"])}
        except ConfigError as e:
            raise DataError(f"{where}: {e}") from None
    if isinstance(record, dict) and {"prompt", "completion"} <= record.keys():
        for key in ("prompt", "completion"):
            if not isinstance(record[key], str):
                raise DataError(f"{where}: {key} must be a string, got {type(record[key]).__name__}")
        return {"prompt": record["prompt"], "completion": record["completion"]}
    raise DataError(f'{where}: expected {{"messages": [...]}} or {{"prompt": ..., "completion": '
                    f'...}}, got {_short(record)}')


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- rendering: the assistant spans ------------------------------------------------------

def assistant_spans(template: ChatTemplate, messages: list[dict],
                    where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) characters of each assistant message.

    >>> text, spans = assistant_spans(ChatTemplate(), [{"role": "user", "content": "Hi"},
    ...                                                {"role": "assistant", "content": "Yo"}])
    >>> text
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nYo<|im_end|>\\n'
    >>> [text[a:b] for a, b in spans]
    ['Yo<|im_end|>']
    """
    at = f"{where}: " if where else ""
    text = template.render(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise DataError(f"{at}messages[0] is an assistant message; a conversation starts "
                            "with a system or user message")
        before = template.render(messages[:i], add_generation_prompt=True)
        after = template.render(messages[:i + 1], add_generation_prompt=False)
        if not (after.startswith(before) and text.startswith(after)):
            raise DataError(f"{at}the chat template does not render messages[{i}] as an "
                            "extension of the conversation before it (a template that rewrites "
                            "earlier turns), so its span cannot be found")
        start, end = len(before), _reply_end(after, len(before))
        if end <= start:
            raise DataError(f"{at}the chat template renders no text for assistant "
                            f"messages[{i}]; nothing of it could be trained")
        spans.append((start, end))
    if not spans:
        raise DataError(f"{at}the conversation has no assistant message the template renders; "
                        "an SFT example needs at least one reply to train on")
    return text, spans


def _reply_end(after: str, start: int) -> int:
    """Where a reply's span ends: at the last non-space character the template wrote for it
    (its end-of-turn marker, or the reply itself when the template writes none), so the
    layout newline after the marker is not trained."""
    return max(start, len(after.rstrip()))


def segments(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[str, bool]]:
    """The text cut at the spans' edges: (piece, trained), in order, empty pieces left out.

    >>> segments("abcdef", [(1, 3), (4, 5)])
    [('a', False), ('bc', True), ('d', False), ('e', True), ('f', False)]
    """
    out, at = [], 0
    for start, end in spans:
        out += [(text[at:start], False), (text[start:end], True)]
        at = end
    out.append((text[at:], False))
    return [(piece, trained) for piece, trained in out if piece]


# ---- tokenizing --------------------------------------------------------------------------

def encode_segments(tokenizer: Any, pieces: Sequence[tuple[str, bool]], source: str = "",
                    train_on_prompt: bool = False) -> Example:
    """Encode each piece on its own (special tokens allowed: the template writes them), so
    every token belongs to exactly one piece."""
    ids: list[int] = []
    trained: list[bool] = []
    for piece, is_reply in pieces:
        piece_ids = tokenizer.encode(piece, allowed_special="all")
        ids += piece_ids
        trained += [is_reply or train_on_prompt] * len(piece_ids)
    return Example(ids, trained, source)


def check_no_specials(tokenizer: Any, messages: Iterable[dict], where: str) -> None:
    """Refuse content that spells a special token: it would be read as template markup."""
    names = set(getattr(tokenizer, "special_tokens", {})) | set(getattr(tokenizer, "added_tokens", {}))
    for i, message in enumerate(messages):
        hit = next((s for s in names if s in message["content"]), None)
        if hit is not None:
            raise DataError(f"{where}: messages[{i}].content contains the special token {hit!r}, "
                            "which would be read as chat markup; remove or escape it")


def tokenize_record(record: dict, tokenizer: Any, template: ChatTemplate | None = None,
                    where: str = "", train_on_prompt: bool = False) -> Example:
    """One record as an Example. A chat needs a template; a prompt/completion pair is rendered
    as a user + assistant chat with one, else the plain concatenation (completion and eos
    trained)."""
    if "prompt" in record:
        if template is None:
            return _plain_pair(record, tokenizer, where, train_on_prompt)
        record = {"messages": [{"role": "user", "content": record["prompt"]},
                               {"role": "assistant", "content": record["completion"]}]}
    if template is None:
        raise ConfigError("chat records need a chat template; pass the model's "
                          "(lmstack.models.directory.model_chat_template) or ChatTemplate()")
    check_no_specials(tokenizer, record["messages"], where)
    text, spans = assistant_spans(template, record["messages"], where)
    return encode_segments(tokenizer, segments(text, spans), where, train_on_prompt)


def _plain_pair(record: dict, tokenizer: Any, where: str, train_on_prompt: bool) -> Example:
    """prompt + completion + eos, the completion and eos trained."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        eos = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
    pieces = [(record["prompt"], False), (record["completion"], True)]
    example = encode_segments(tokenizer, [(p, t) for p, t in pieces if p], where, train_on_prompt)
    if eos is not None:
        example = Example(example.ids + [eos], example.trained + [True], where)
    if not any(example.trained):
        raise DataError(f"{where}: the completion is empty; there is nothing to train on")
    return example


def load_sft_examples(path: str | os.PathLike, tokenizer: Any, template: ChatTemplate | None,
                      train_on_prompt: bool = False) -> list[Example]:
    """Every record of a JSONL file, tokenized (errors name the file and line)."""
    return [tokenize_record(record, tokenizer, template, where, train_on_prompt)
            for where, record in read_jsonl(path)]


# ---- truncation and packing --------------------------------------------------------------

@dataclass
class TruncationReport:
    """How truncation changed the data: examples kept whole, cut, and dropped."""

    kept: int = 0
    cut: int = 0
    dropped: int = 0
    dropped_sources: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.kept + self.cut} examples kept ({self.cut} cut from the right), "
                f"{self.dropped} dropped (no trained token left)")


def truncate(examples: Iterable[Example], max_len: int) -> tuple[list[Example], TruncationReport]:
    """Cut each example from the right to max_len + 1 tokens (max_len positions); drop those
    left with no trained target.

    >>> ex = [Example([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]),  # its reply is cut away: dropped
    ...       Example([1, 2, 3, 4], [0, 1, 1, 1]),        # cut to 3 tokens, a reply left
    ...       Example([1, 2, 3], [0, 1, 1])]              # fits
    >>> kept, report = truncate(ex, 2)
    >>> [e.ids for e in kept], str(report)
    ([[1, 2, 3], [1, 2, 3]], '2 examples kept (1 cut from the right), 1 dropped (no trained token left)')
    """
    if max_len < 1:
        raise ConfigError(f"max_len must be at least 1, got {max_len}")
    kept, report = [], TruncationReport()
    for e in examples:
        cut = len(e.ids) > max_len + 1
        if cut:
            e = Example(e.ids[:max_len + 1], e.trained[:max_len + 1], e.source)
        if not any(e.trained[1:]):  # the first token is never a target
            report.dropped += 1
            report.dropped_sources.append(e.source)
            continue
        report.cut += cut
        report.kept += not cut
        kept.append(e)
    return kept, report


@dataclass
class PackedRow:
    """One row of up to max_len positions holding whole examples side by side."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    segment_ids: list[int] = field(default_factory=list)  # 1, 2, ... per example; 0 is padding
    sources: list[str] = field(default_factory=list)

    def add(self, example: Example) -> None:
        """Append an example's inputs and labels as the next segment."""
        inputs, labels = example.inputs_and_labels()
        segment = len(self.sources) + 1
        self.input_ids += inputs
        self.labels += labels
        self.position_ids += range(len(inputs))  # positions restart: each example starts at 0
        self.segment_ids += [segment] * len(inputs)
        self.sources.append(example.source)


def pack(examples: Iterable[Example], max_len: int) -> list[PackedRow]:
    """First-fit packing: each example goes into the first row with room, else a new row.
    Examples must already fit (`truncate`).

    >>> rows = pack([Example([1, 2, 3], [0, 1, 1]), Example([4, 5, 6, 7], [0, 0, 1, 1]),
    ...              Example([8, 9], [0, 1])], max_len=4)
    >>> [(r.input_ids, r.labels, r.position_ids, r.segment_ids) for r in rows]
    [([1, 2, 8], [2, 3, 9], [0, 1, 0], [1, 1, 2]), ([4, 5, 6], [-100, 6, 7], [0, 1, 2], [1, 1, 1])]
    """
    rows: list[PackedRow] = []
    for e in examples:
        need = len(e.ids) - 1
        if need > max_len:
            raise ConfigError(f"{e.source or 'an example'} has {need} positions, more than "
                              f"max_len={max_len}; truncate the examples first")
        if need < 1:
            continue  # a single token has no target
        row = next((r for r in rows if len(r.input_ids) + need <= max_len), None)
        if row is None:
            row = PackedRow()
            rows.append(row)
        row.add(e)
    return rows


def collate(rows: Sequence[PackedRow], max_len: int, pad_id: int = 0) -> tuple[torch.Tensor, ...]:
    """(input_ids, labels, position_ids, segment_ids), each a (B, max_len) long tensor; padding
    has labels -100 and segment 0. A batch with no trained token is an error."""
    if not rows:
        raise DataError("an empty batch: there are no packed rows to collate")

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (max_len - len(values))

    out = tuple(torch.tensor([padded(getattr(r, name), fill) for r in rows], dtype=torch.long)
                for name, fill in (("input_ids", pad_id), ("labels", IGNORE),
                                   ("position_ids", 0), ("segment_ids", 0)))
    if not bool((out[1] != IGNORE).any()):
        sources = ", ".join(s for r in rows for s in r.sources)
        raise DataError(f"a batch has no trained token (examples {sources}); the assistant "
                        "spans are empty or were cut away: check the data and max_len")
    return out


def block_diagonal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool, True where query i may attend to key j: j <= i in the same segment
    (padding, segment 0, sees only earlier padding, so no row is all hidden).

    >>> block_diagonal_mask(torch.tensor([[1, 1, 2]]))[0, 0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    t = segment_ids.size(-1)
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T): query i, key j
    return (same & causal)[:, None]  # (B, 1, T, T), broadcast over heads
