"""Data distillation's first half: the teacher answers the prompts of a JSONL file, written as SFT JSONL.

Sequence-level knowledge distillation (Kim & Rush 2016): instead of matching the teacher's
distribution token by token, the student is fine-tuned on what the teacher writes. It needs
only the teacher's text, so teacher and student may use different tokenizers and templates.

Each input line is a chat `{"messages": [...]}` or `{"prompt": ...}` (a `completion`, or a
final assistant turn, already there is replaced: the teacher writes it). The prompt is rendered
with the *teacher's* chat template and answered through the inference engine (greedy, or
sampled with `teacher_temperature`, `samples_per_prompt` answers each), stopping at the
template's end of turn (sft_run.answer_settings). Each answer is one line of the output, in
the input's own layout, ready for `lmstack sft`; the student's template renders it there.

Writing is resumable and atomic: chunks of `generate_batch` prompts are appended (fsynced) to
OUT/distill_data.jsonl.partial, and OUT/distill_data.progress.json records how far they got
(atomically, after each chunk), so a killed run continues where it stopped; the finished file
is renamed to OUT/distill_data.jsonl, which later runs with the same teacher, data and
settings reuse. An answer cut by max_new_tokens is left out (and counted): the student would
learn to stop mid-answer.

    n = write_answers(engine, template, prompts, Path("runs/d/distill_data.jsonl"), settings, key)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmstack.atomic import atomic_write_json, atomic_write_text
from lmstack.errors import ConfigError, DataError
from lmstack.posttrain.sft_data import check_no_specials, read_jsonl
from lmstack.tokenizer.chat_template import ChatTemplate, validate_messages

DATA_FILE = "distill_data.jsonl"


@dataclass(frozen=True)
class Prompt:
    """One prompt to answer: where it came from, its record without an answer, its ids."""

    where: str
    record: dict  # {"messages": [... ending before the reply]} or {"prompt": ...}
    ids: list[int]


def check_prompt(record: Any, where: str) -> dict:
    """A chat without its final assistant turn, or {"prompt"}: what the teacher answers.

    >>> check_prompt({"prompt": "2+2=", "completion": "5"}, "x:1")
    {'prompt': '2+2='}
    >>> check_prompt({"messages": [{"role": "user", "content": "Hi"},
    ...                            {"role": "assistant", "content": "old"}]}, "x:2")
    {'messages': [{'role': 'user', 'content': 'Hi'}]}
    >>> check_prompt({"completion": "4"}, "x:3")
    Traceback (most recent call last):
    ...
    lmstack.errors.DataError: x:3: expected {"messages": [...]} or {"prompt": ...} to answer, got {"completion": "4"}
    """
    if isinstance(record, dict) and "messages" in record:
        try:
            messages = validate_messages(record["messages"])
        except ConfigError as e:
            raise DataError(f"{where}: {e}") from None
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the teacher writes this turn
        if not messages or messages[-1]["role"] == "assistant":
            raise DataError(f"{where}: nothing to answer: the chat has no user turn before its "
                            "last assistant turn")
        return {"messages": messages}
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return {"prompt": record["prompt"]}
    short = json.dumps(record, ensure_ascii=False)[:60]
    raise DataError(f'{where}: expected {{"messages": [...]}} or {{"prompt": ...}} to answer, '
                    f"got {short}")


def messages_of(record: dict) -> list[dict]:
    """The conversation a record asks to continue (a bare prompt is one user turn)."""
    return record["messages"] if "messages" in record else [{"role": "user", "content": record["prompt"]}]


def answered(record: dict, text: str) -> dict:
    """The record with the teacher's answer, in the record's layout (an SFT line).

    >>> answered({"prompt": "2+2="}, "4")
    {'prompt': '2+2=', 'completion': '4'}
    """
    if "messages" in record:
        return {"messages": record["messages"] + [{"role": "assistant", "content": text}]}
    return {"prompt": record["prompt"], "completion": text}


def read_prompts(path: str | os.PathLike, tok: Any, template: ChatTemplate,
                 context: int | None) -> list[Prompt]:
    """Every prompt of the file, rendered with `template` and encoded (errors name the line)."""
    prompts = []
    for where, record in read_jsonl(path, check_prompt, kind="distillation data file",
                                    hint='a JSONL file of {"messages": [...]} or {"prompt": ...}'):
        messages = messages_of(record)
        check_no_specials(tok, messages, where)
        ids = tok.encode(template.render(messages, add_generation_prompt=True), allowed_special="all")
        if context is not None and len(ids) >= context:
            raise DataError(f"{where}: the prompt is {len(ids)} tokens, and the teacher's context "
                            f"of {context} leaves no room for an answer; shorten it")
        prompts.append(Prompt(where, record, ids))
    if not prompts:
        raise DataError(f"{path} holds no prompts; add lines of {{\"prompt\": ...}} or chats")
    return prompts


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: which data a finished answer file belongs to."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_stamp(path: str | os.PathLike) -> list:
    """(name, size, mtime) of a model file or of a directory's files: a teacher trained again
    in the same place is another teacher (hashing its weights would cost a read of them)."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


# ---- the resumable answer file -----------------------------------------------------------

@dataclass
class Progress:
    """How far the answer file got: prompts answered, lines written, answers left out."""

    done: int = 0
    lines: int = 0
    truncated: int = 0
    complete: bool = False


def _paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".partial"), out.with_name(out.stem + ".progress.json")


def _resume(out: Path, key: dict) -> Progress:
    """The progress of an earlier run with the same key (its partial file trimmed to what the
    progress file vouches for), a fresh start if there is none; another key is an error."""
    partial, record = _paths(out)
    if not record.is_file():
        return Progress()
    saved = json.loads(record.read_text(encoding="utf-8"))
    if saved.get("key") != key:
        raise ConfigError(f"{out} was written for another teacher, data file or generation "
                          f"settings ({record} says which); remove {out.name}* from that "
                          "directory to answer again, or give another --out")
    progress = Progress(**saved["progress"])
    if progress.complete:
        return progress if out.is_file() else Progress()  # the answers were removed: again
    lines = partial.read_text(encoding="utf-8").splitlines(keepends=True) if partial.is_file() else []
    if len(lines) < progress.lines:  # the partial file was lost: start over
        return Progress()
    atomic_write_text(partial, "".join(lines[:progress.lines]))  # drop a chunk cut mid-write
    return progress


def write_answers(engine: Any, prompts: list[Prompt], out: Path, settings: dict, key: dict,
                  chunk: int = 16, seed: int = 0) -> Progress:
    """Answer every prompt with `engine.generate(ids, **settings)` into `out` (resuming an
    earlier run of the same `key`); the answers per prompt are settings' num_return_sequences."""
    progress = _resume(out, key)
    if progress.complete:
        return progress
    partial, record = _paths(out)
    partial.touch()
    sampled = settings.get("temperature", 0) > 0
    while progress.done < len(prompts):
        part = prompts[progress.done:progress.done + chunk]
        # one seed per chunk, and chunks start at multiples of `chunk`: a resumed run samples
        # what an uninterrupted one would have
        extra = {"seed": seed + progress.done // chunk} if sampled else {}
        groups = engine.generate([p.ids for p in part], **settings, **extra)
        lines = []
        for p, group in zip(part, groups):
            for c in group if isinstance(group, list) else [group]:
                if c.finish_reason == "length":
                    progress.truncated += 1
                else:
                    lines.append(json.dumps(answered(p.record, c.text), ensure_ascii=False) + "\n")
        with partial.open("a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        progress.done += len(part)
        progress.lines += len(lines)
        atomic_write_json(record, {"key": key, "progress": vars(progress)})
    os.replace(partial, out)
    progress.complete = True
    atomic_write_json(record, {"key": key, "progress": vars(progress)})
    return progress
