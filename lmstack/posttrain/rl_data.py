"""The prompts of an RL run (`lmstack rl`): JSONL records -> rendered prompt ids + what the reward reads.

Each line is one prompt, in one of three layouts:

    {"prompt": "What is 2 plus 3?", "answer": "5"}
    {"messages": [{"role": "system", ...}, {"role": "user", ...}], "answer": 5}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "85"}]}

The last is an SFT chat (lmstack/data/word_problems.py writes them): its final assistant
message is the answer and the turns before it are the prompt, so the SFT task's files serve RL
unchanged. The prompt is rendered with the model's chat template up to where the reply begins,
as at inference. The reward (rewards.py) receives the record with the answer written as its
last, assistant message (and as "answer"), which is what `exact_answer` checks; other keys of
the line (a "schema" for json_schema) pass through.

`exact_answer` needs an answer on every line (a DataError names the line that has none); other
rewards do not. A prompt too long to leave room for `rl.max_new_tokens` in block_size is dropped
and counted. `PromptLoader` deals the prompts in a seeded order per epoch, split across ranks,
resumable (sft.py's SFTLoader, dealing prompts instead of rows).

Run the tests: `pytest lmstack/posttrain/rl_data.py --doctest-modules tests/posttrain/test_rl_run.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lmstack.errors import ConfigError, DataError
from lmstack.posttrain.sft import SFTLoader
from lmstack.posttrain.sft_data import check_no_specials, read_jsonl
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.chat_template import ChatTemplate, validate_messages


@dataclass(frozen=True)
class RLPrompt:
    """One prompt: its ids (ending where the reply begins), its chat, and the reward's record."""

    ids: list[int]
    messages: list[dict]
    record: dict  # the line, with "answer" and the answer as its last (assistant) message
    source: str = ""

    @property
    def answer(self) -> str | None:
        """The answer the reward checks, if the line has one."""
        return self.record.get("answer")


def check_prompt_record(record: Any, where: str = "") -> dict:
    """The record as {"messages": the prompt, "answer": str or None, **other keys}.

    >>> check_prompt_record({"prompt": "2+3?", "answer": 5})["answer"]
    '5'
    >>> chat = {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]}
    >>> r = check_prompt_record(chat); [m["role"] for m in r["messages"]], r["answer"]
    (['user'], '5')
    >>> check_prompt_record({"messages": [{"role": "assistant", "content": "5"}]}, "x:2")
    Traceback (most recent call last):
    ...
    lmstack.errors.DataError: x:2: the prompt has no message before the answer; a prompt needs a user message to answer
    """
    at = f"{where}: " if where else ""
    if not isinstance(record, dict) or not ({"prompt", "messages"} & record.keys()):
        raise DataError(f'{at}expected {{"prompt": ..., "answer": ...}} or {{"messages": [...]}}, '
                        f"got {str(record)[:60]}")
    if "messages" in record:
        try:
            messages = validate_messages(record["messages"])
        except ConfigError as e:
            raise DataError(f"{at}{e}") from None
    elif isinstance(record["prompt"], str):
        messages = [{"role": "user", "content": record["prompt"]}]
    else:
        raise DataError(f"{at}prompt must be a string (or give messages), got "
                        f"{type(record['prompt']).__name__}")
    answer = record.get("answer")
    if messages[-1]["role"] == "assistant":  # an SFT chat: its reply is the answer
        answer = messages[-1]["content"] if answer is None else answer
        messages = messages[:-1]
    if not messages:
        raise DataError(f"{at}the prompt has no message before the answer; a prompt needs a "
                        "user message to answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise DataError(f"{at}answer must be a string or a number, got {type(answer).__name__}")
    rest = {k: v for k, v in record.items() if k not in ("prompt", "messages", "answer")}
    return {**rest, "messages": messages, "answer": None if answer is None else str(answer)}


def tokenize_prompt(record: dict, tok: Tokenizer, template: ChatTemplate, where: str = "") -> RLPrompt:
    """A checked record as an RLPrompt: the chat rendered with the generation prompt, encoded."""
    messages = record["messages"]
    check_no_specials(tok, messages, where)
    ids = tok.encode(template.render(messages, add_generation_prompt=True), allowed_special="all")
    reward_record = {k: v for k, v in record.items() if k != "answer" or v is not None}
    if record["answer"] is not None:
        reward_record["messages"] = messages + [{"role": "assistant", "content": record["answer"]}]
    return RLPrompt(ids, messages, reward_record, where)


@dataclass
class PromptDrops:
    """What loading left out: prompts with no room for a completion."""

    too_long: int = 0

    def __str__(self) -> str:
        return f"{self.too_long} prompts dropped (no room for rl.max_new_tokens in block_size)"


def load_rl_prompts(path: str | os.PathLike, tok: Tokenizer, template: ChatTemplate,
                    max_prompt: int, needs_answer: bool) -> tuple[list[RLPrompt], PromptDrops]:
    """Every prompt of a JSONL file of at most `max_prompt` tokens (errors name file and line)."""
    out, drops = [], PromptDrops()
    for where, record in read_jsonl(path, check_prompt_record, "RL prompt file",
                                    'a JSONL file of {"prompt" or "messages", "answer"} lines'):
        if needs_answer and record["answer"] is None:
            raise DataError(f'{where}: the exact_answer reward needs an "answer" on every line (or '
                            "a chat ending with the assistant's answer); add it, or use another "
                            "--reward")
        prompt = tokenize_prompt(record, tok, template, where)
        if len(prompt.ids) > max_prompt:
            drops.too_long += 1
            continue
        out.append(prompt)
    return out, drops


class PromptLoader(SFTLoader):
    """RL prompts in a seeded order per epoch, dealt to ranks, resumable; a batch is a list.

    >>> a = PromptLoader([RLPrompt([i], [], {}) for i in range(5)], batch_size=2, seed=1)
    >>> _ = a.next_batch(); state = a.state_dict(); batch = a.next_batch()
    >>> b = PromptLoader([RLPrompt([i], [], {}) for i in range(5)], batch_size=2, seed=1)
    >>> b.load_state_dict(state); b.next_batch() == batch
    True
    """

    what = "RL prompts"

    def __init__(self, prompts: list[RLPrompt], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(prompts, batch_size, 0, 0, seed, rank, world_size)

    def collate(self, items: list) -> list[RLPrompt]:
        """A batch of prompts is the prompts themselves: the rollout loader samples from them."""
        return list(items)
