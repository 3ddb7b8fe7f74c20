"""Arithmetic word problems as chats: a seeded fine-tuning task with a checkable answer.

    {"messages": [{"role": "user", "content": "A shelf holds 47 books and 38 more are put on it.
     How many books are on the shelf? Answer with the number only."},
     {"role": "assistant", "content": "85"}]}

Each problem is an addition or a subtraction of two operands of `digits` digits (a difference
is never negative), worded by one of several templates and asked for "the number only", so
exact match is a fair score: a model either learned the format and the carrying, or it did not.
The train and test splits share nothing: they are worded by disjoint templates, and their
operand pairs fall in disjoint halves of a seeded hash (`split_of`), so no test question, and
no test pair of numbers, was seen in training. A base model fails mostly on the format (it
explains, or repeats the question) and on carries; fine-tuning must teach both
(benchmarks/finetune.py measures it).

Run it: `python -m lmstack.data.word_problems 3` prints three train and three test chats.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass

from lmstack.errors import ConfigError

ASK = " Answer with the number only."


@dataclass(frozen=True)
class Template:
    """A wording: `text` with {a} and {b}, and whether it asks for a + b or a - b."""

    text: str
    op: str  # "+" or "-"


TRAIN_TEMPLATES = (
    Template("A shelf holds {a} books and {b} more are put on it. How many books are on the shelf?", "+"),
    Template("Maya had {a} stickers and was given {b} more. How many stickers does she have now?", "+"),
    Template("A train carries {a} passengers; {b} more get on. How many passengers are on board?", "+"),
    Template("What is {a} plus {b}?", "+"),
    Template("A farmer picked {a} apples and sold {b} of them. How many apples are left?", "-"),
    Template("There were {a} birds on a wire and {b} flew away. How many birds remain?", "-"),
    Template("A tank held {a} litres and {b} litres were drained. How many litres are in it?", "-"),
    Template("What is {a} minus {b}?", "-"),
)
TEST_TEMPLATES = (
    Template("Sam saved {a} coins and then found {b} coins. How many coins does Sam have?", "+"),
    Template("A library lent out {a} books on Monday and {b} on Tuesday. How many books in all?", "+"),
    Template("A baker made {a} rolls and {b} were eaten. How many rolls are left?", "-"),
    Template("Subtract {b} from {a}. What do you get?", "-"),
)
SPLITS = {"train": TRAIN_TEMPLATES, "test": TEST_TEMPLATES}


def split_of(a: int, b: int) -> str:
    """The split an unordered operand pair belongs to: a hash cuts the pairs in two halves
    (unordered, since a difference puts the larger operand first).

    >>> split_of(12, 34), split_of(12, 35), split_of(35, 12)
    ('test', 'train', 'train')
    """
    h = hashlib.blake2b(f"{min(a, b)},{max(a, b)}".encode(), digest_size=2).digest()
    return "train" if h[0] % 2 == 0 else "test"


def answer(template: Template, a: int, b: int) -> int:
    """The value a template asks for.

    >>> answer(TRAIN_TEMPLATES[0], 47, 38), answer(TRAIN_TEMPLATES[4], 47, 38)
    (85, 9)
    """
    return a + b if template.op == "+" else a - b


def problem(template: Template, a: int, b: int) -> dict:
    """One chat: the worded question, and the number as the assistant's reply."""
    return {"messages": [{"role": "user", "content": template.text.format(a=a, b=b) + ASK},
                         {"role": "assistant", "content": str(answer(template, a, b))}]}


def word_problems(n: int, split: str, seed: int = 0, digits: int = 2) -> list[dict]:
    """`n` distinct chats of `split` ("train" or "test"), reproducible from `seed`.

    >>> train, test = word_problems(50, "train"), word_problems(50, "test")
    >>> {p["messages"][0]["content"] for p in train} & {p["messages"][0]["content"] for p in test}
    set()
    >>> word_problems(1, "test", seed=3)[0]["messages"][1]["content"].isdigit()
    True
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {sorted(SPLITS)}")
    if digits < 1:
        raise ConfigError(f"digits must be >= 1, got {digits}")
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1
    rng = random.Random(f"{seed}:{split}:{digits}")
    room = sum(1 for a in range(lo, hi + 1) for b in range(lo, hi + 1) if split_of(a, b) == split)
    if n > room * len(SPLITS[split]):
        raise ConfigError(f"{n} {split} problems of {digits} digits do not exist; ask for fewer")
    seen: set[tuple[int, int, int]] = set()
    out = []
    while len(out) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        t = rng.randrange(len(SPLITS[split]))
        if SPLITS[split][t].op == "-" and b > a:
            a, b = b, a  # differences stay non-negative (and 5 - 3 is asked once, not twice)
        if split_of(a, b) != split or (a, b, t) in seen:
            continue
        seen.add((a, b, t))
        out.append(problem(SPLITS[split][t], a, b))
    return out


def exact_match(reply: str, record: dict) -> bool:
    """Whether a generated reply is the record's answer (spaces and a final period aside).

    >>> rec = problem(TRAIN_TEMPLATES[3], 2, 3)  # what is 2 plus 3?
    >>> exact_match(" 5.", rec), exact_match("The answer is 5", rec)
    (True, False)
    """
    return reply.strip().rstrip(".").strip() == record["messages"][-1]["content"]


if __name__ == "__main__":
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for name in SPLITS:
        for p in word_problems(k, name):
            print(name, json.dumps(p))
