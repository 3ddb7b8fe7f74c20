"""Synthetic arithmetic: random expression trees printed with their exact integer value.

Examples look like ``(3+(4*2))=11``. They are a cheap, unlimited corpus with a checkable
answer, the classic probe of whether a small transformer learns an algorithm rather than
surface statistics (e.g. Nogueira et al. 2021, "Investigating the Limitations of Transformers
with Simple Arithmetic Tasks"; Lee et al. 2023, "Teaching Arithmetic to Small Transformers").

A tree is an ``int`` leaf or an ``(op, left, right)`` tuple. Every binary node is printed in
parentheses so the text is unambiguous without precedence rules, and negative leaves as
``(-3)``. Values are Python integers with Python's semantics (``//`` floors, ``%`` takes the
divisor's sign), so ``eval`` of the printed expression gives the printed value; a ``//`` or
``%`` whose divisor evaluates to 0 gets a random nonzero leaf as divisor instead.

Run it: ``python -m lmstack.data.synthetic [N]`` prints N examples (``lmstack data synth``
writes them to a file with ``write_examples``).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from lmstack.atomic import atomic_open
from lmstack.data.document import Document
from lmstack.errors import ConfigError, DataError

Tree = Union[int, tuple[str, "Tree", "Tree"]]

OPERATORS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
}
_DIVIDING = {"//", "%"}

# Bounds checked before any tree is drawn: the expected size of a tree is known from its depth
# and leaf_prob (expected_nodes), so a request that would run for hours is refused up front.
MAX_DEPTH = 100
MAX_EXPECTED_NODES = 10_000        # per example: ~30 KB of text, far past what a model learns
MAX_EXPECTED_TOTAL = 50_000_000    # over all n examples: ~150 MB of text


@dataclass
class ArithmeticConfig:
    """How many examples, how deep the trees, which operators and which leaf numbers."""

    n: int = 1000
    max_depth: int = 3
    ops: tuple[str, ...] = ("+", "-", "*")
    low: int = 0
    high: int = 9
    leaf_prob: float = 0.3  # Chance a node above max depth is a leaf anyway: mixes sizes.
    seed: int = 0

    def check(self) -> ArithmeticConfig:
        """Return self if the settings can generate examples, else raise ConfigError."""
        unknown = [op for op in self.ops if op not in OPERATORS]
        if unknown or not self.ops:
            raise ConfigError(f"unknown operators {unknown or '(none given)'}; choose from {list(OPERATORS)}")
        if self.low > self.high:
            raise ConfigError(f"number range low={self.low} > high={self.high}; swap them")
        if self.max_depth < 0 or self.n < 0:
            raise ConfigError("max_depth and n must be >= 0")
        if not 0.0 <= self.leaf_prob <= 1.0:
            raise ConfigError(f"leaf_prob={self.leaf_prob} is not a probability; use a value in [0, 1]")
        if set(self.ops) <= _DIVIDING and self.low == self.high == 0:
            raise ConfigError("only // and % with every number 0 always divides by zero; widen low..high")
        return self._check_size()

    def _check_size(self) -> ArithmeticConfig:
        """Refuse depths and counts whose expected output is too large to write."""
        size = expected_nodes(self.max_depth, self.leaf_prob)
        if size > MAX_EXPECTED_NODES:
            raise ConfigError(
                f"max_depth (--depth) {self.max_depth} gives trees of {size:.3g} nodes on average "
                f"(a node branches in two with probability {1 - self.leaf_prob:g}), above the limit "
                f"of {MAX_EXPECTED_NODES:,}; use a depth of at most {self.deepest()}")
        if self.max_depth > MAX_DEPTH:  # small trees on average, but a rare one could be this deep
            raise ConfigError(f"max_depth (--depth) {self.max_depth} is above the limit of {MAX_DEPTH}; "
                              f"use a depth of at most {self.deepest()}")
        if self.n * size > MAX_EXPECTED_TOTAL:
            raise ConfigError(
                f"{self.n:,} examples of {size:.3g} nodes on average is {self.n * size:.3g} nodes, "
                f"above the limit of {MAX_EXPECTED_TOTAL:,}; lower n (--n) or max_depth (--depth)")
        return self

    def deepest(self) -> int:
        """The largest max_depth whose expected tree size is within the limits."""
        d = 0
        while d < MAX_DEPTH and expected_nodes(d + 1, self.leaf_prob) <= MAX_EXPECTED_NODES:
            d += 1
        return d


def expected_nodes(max_depth: int, leaf_prob: float) -> float:
    """Mean node count of a random tree: E(0) = 1, E(d) = 1 + 2 (1 - leaf_prob) E(d - 1).

    A node above the last level is a leaf with probability leaf_prob, else it has two children,
    so E(d) = sum over levels k of (2 (1 - leaf_prob))**k: it grows geometrically when a node
    has more than one child on average (leaf_prob < 0.5). The zero-divisor fix only shrinks trees.

    >>> expected_nodes(0, 0.3), expected_nodes(1, 0.3), round(expected_nodes(2, 0.3), 2)
    (1.0, 2.4, 4.36)
    >>> expected_nodes(3, 0.0), expected_nodes(10, 1.0), expected_nodes(9, 0.5)
    (15.0, 1.0, 10.0)
    """
    r = 2.0 * (1.0 - leaf_prob)
    if r == 1.0:
        return float(max_depth + 1)
    try:
        return (r ** (max_depth + 1) - 1.0) / (r - 1.0)
    except OverflowError:  # r > 1 and a depth in the thousands: more nodes than a float holds
        return math.inf


def evaluate(tree: Tree) -> int:
    """The exact integer value of a tree.

    >>> evaluate(("+", 3, ("*", 4, 2)))
    11
    >>> evaluate(("//", -7, 2)), evaluate(("%", -7, 2))
    (-4, 1)
    """
    values: list[int] = []
    todo: list[Tree | str] = [tree]  # an explicit stack: deep trees never hit the recursion limit
    while todo:
        t = todo.pop()
        if isinstance(t, int):
            values.append(t)
        elif isinstance(t, str):  # both operands are done: apply the operator
            b, a = values.pop(), values.pop()
            values.append(OPERATORS[t](a, b))
        else:
            todo += [t[0], t[2], t[1]]  # left first, then right, then the operator
    return values[0]


def render(tree: Tree) -> str:
    """The fully parenthesized text of a tree.

    >>> render(("+", 3, ("*", 4, 2)))
    '(3+(4*2))'
    >>> render(("-", -2, 5))
    '((-2)-5)'
    >>> render(7)
    '7'
    """
    parts: list[str] = []
    todo: list[Tree | str] = [tree]  # strings on the stack are text to print as they are
    while todo:
        t = todo.pop()
        if isinstance(t, str):
            parts.append(t)
        elif isinstance(t, int):
            parts.append(f"({t})" if t < 0 else str(t))
        else:
            todo += [")", t[2], t[0], t[1], "("]  # pushed in reverse: "(", left, op, right, ")"
    return "".join(parts)


def depth(tree: Tree) -> int:
    """Number of operator levels (0 for a leaf).

    >>> depth(5), depth(("+", 1, ("*", 2, 3)))
    (0, 2)
    """
    deepest, todo = 0, [(tree, 0)]
    while todo:
        t, d = todo.pop()
        if isinstance(t, int):
            deepest = max(deepest, d)
        else:
            todo += [(t[1], d + 1), (t[2], d + 1)]
    return deepest


def random_tree(rng: random.Random, cfg: ArithmeticConfig, levels: int | None = None) -> Tree:
    """Draw a tree of at most `levels` (default cfg.max_depth) operator levels.

    >>> t = random_tree(random.Random(0), ArithmeticConfig(max_depth=2))
    >>> depth(t) <= 2
    True
    """
    return _draw(rng, cfg, cfg.max_depth if levels is None else levels)[0]


def _draw(rng: random.Random, cfg: ArithmeticConfig, levels: int) -> tuple[Tree, int]:
    """A random tree and its value, built bottom-up so no subtree is evaluated twice.

    The draws come in the order of the recursive definition (a node, its whole left subtree,
    its whole right subtree), so a seed always gives the same examples; the recursion is an
    explicit stack of open operators, each with the (tree, value) children finished so far.
    """
    open_ops: list[tuple[str, list[tuple[Tree, int]]]] = []
    while True:
        if len(open_ops) == levels or rng.random() < cfg.leaf_prob:
            leaf = rng.randint(cfg.low, cfg.high)
            done: tuple[Tree, int] = (leaf, leaf)
        else:
            open_ops.append((rng.choice(cfg.ops), []))
            continue
        while open_ops:  # hand the finished subtree up until an operator still needs a right child
            op, children = open_ops[-1]
            children.append(done)
            if len(children) == 1:
                break
            open_ops.pop()
            done = _combine(rng, cfg, op, children[0], children[1])
        else:
            return done


def _combine(rng: random.Random, cfg: ArithmeticConfig, op: str,
             left_done: tuple[Tree, int], right_done: tuple[Tree, int]) -> tuple[Tree, int]:
    """The node `op` over two finished subtrees, and its value."""
    (left, a), (right, b) = left_done, right_done
    if op in _DIVIDING and b == 0:
        # A zero divisor becomes a random nonzero leaf: O(1), where redrawing the subtree could
        # recurse without bound when most subtrees are 0 (e.g. only "%" on small numbers).
        if cfg.low == cfg.high == 0:
            op = rng.choice([o for o in cfg.ops if o not in _DIVIDING] or ["+"])
        else:
            while b == 0:
                b = rng.randint(cfg.low, cfg.high)
            right = b
    return (op, left, right), OPERATORS[op](a, b)


def example(tree: Tree) -> str:
    """One training line: the expression, '=', its value.

    >>> example(("+", 3, ("*", 4, 2)))
    '(3+(4*2))=11'
    """
    value = evaluate(tree)
    try:
        return f"{render(tree)}={value}"
    except ValueError:  # Python refuses to print an int of more than 4300 digits
        raise DataError(f"an expression's value has about {value.bit_length() * 0.30103:.0f} digits, "
                        "too long to print; lower max_depth (--depth)") from None


def split_example(text: str) -> tuple[str, int]:
    """Split 'expr=value' back into the expression and the claimed value (for evaluation).

    >>> split_example("(3+(4*2))=11")
    ('(3+(4*2))', 11)
    """
    expr, _, value = text.rpartition("=")
    return expr, int(value)


def iter_examples(cfg: ArithmeticConfig | None = None) -> Iterator[Document]:
    """Yield cfg.n seeded examples, one Document each."""
    cfg = (cfg or ArithmeticConfig()).check()
    rng = random.Random(cfg.seed)
    for i in range(cfg.n):
        yield Document(example(random_tree(rng, cfg)), f"arith:{cfg.seed}:{i}")


def generate(cfg: ArithmeticConfig | None = None) -> list[Document]:
    """The list of cfg.n seeded examples as Documents.

    >>> cfg = ArithmeticConfig(n=2, seed=1)
    >>> [d.text for d in generate(cfg)] == [d.text for d in generate(cfg)]
    True
    """
    return list(iter_examples(cfg))


def write_examples(path: str | os.PathLike, cfg: ArithmeticConfig | None = None) -> Path:
    """Write cfg.n examples atomically: JSONL ({"text": ...}, one document each) if the name
    ends in .jsonl, else one example per line (read back as a single document). Returns path.

    >>> import tempfile
    >>> p = write_examples(Path(tempfile.mkdtemp()) / "a.jsonl", ArithmeticConfig(n=3))
    >>> texts = [json.loads(line)["text"] for line in p.read_text().splitlines()]
    >>> texts == [d.text for d in generate(ArithmeticConfig(n=3))]
    True
    """
    docs = iter_examples((cfg or ArithmeticConfig()).check())  # refuse a bad config before the file
    jsonl = str(path).endswith(".jsonl")
    with atomic_open(path, "w", encoding="utf-8") as f:  # line by line: never all text in memory
        for d in docs:
            f.write((json.dumps({"text": d.text}) if jsonl else d.text) + "\n")
    return Path(path)


if __name__ == "__main__":
    for doc in iter_examples(ArithmeticConfig(n=int(sys.argv[1]) if len(sys.argv) > 1 else 10)):
        print(doc.text)
