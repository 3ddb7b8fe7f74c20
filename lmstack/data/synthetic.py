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
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from lmstack.atomic import atomic_write_text
from lmstack.data.document import Document
from lmstack.errors import ConfigError

Tree = Union[int, tuple[str, "Tree", "Tree"]]

OPERATORS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
}
_DIVIDING = {"//", "%"}


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
        return self


def evaluate(tree: Tree) -> int:
    """The exact integer value of a tree.

    >>> evaluate(("+", 3, ("*", 4, 2)))
    11
    >>> evaluate(("//", -7, 2)), evaluate(("%", -7, 2))
    (-4, 1)
    """
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    return OPERATORS[op](evaluate(left), evaluate(right))


def render(tree: Tree) -> str:
    """The fully parenthesized text of a tree.

    >>> render(("+", 3, ("*", 4, 2)))
    '(3+(4*2))'
    >>> render(("-", -2, 5))
    '((-2)-5)'
    >>> render(7)
    '7'
    """
    if isinstance(tree, int):
        return f"({tree})" if tree < 0 else str(tree)
    op, left, right = tree
    return f"({render(left)}{op}{render(right)})"


def depth(tree: Tree) -> int:
    """Number of operator levels (0 for a leaf).

    >>> depth(5), depth(("+", 1, ("*", 2, 3)))
    (0, 2)
    """
    return 0 if isinstance(tree, int) else 1 + max(depth(tree[1]), depth(tree[2]))


def random_tree(rng: random.Random, cfg: ArithmeticConfig, levels: int | None = None) -> Tree:
    """Draw a tree of at most `levels` (default cfg.max_depth) operator levels.

    >>> t = random_tree(random.Random(0), ArithmeticConfig(max_depth=2))
    >>> depth(t) <= 2
    True
    """
    return _draw(rng, cfg, cfg.max_depth if levels is None else levels)[0]


def _draw(rng: random.Random, cfg: ArithmeticConfig, levels: int) -> tuple[Tree, int]:
    """A random tree and its value, built bottom-up so no subtree is evaluated twice."""
    if levels == 0 or rng.random() < cfg.leaf_prob:
        leaf = rng.randint(cfg.low, cfg.high)
        return leaf, leaf
    op = rng.choice(cfg.ops)
    left, a = _draw(rng, cfg, levels - 1)
    right, b = _draw(rng, cfg, levels - 1)
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
    return f"{render(tree)}={evaluate(tree)}"


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
    docs = iter_examples(cfg)
    if str(path).endswith(".jsonl"):
        lines = (json.dumps({"text": d.text}) for d in docs)
    else:
        lines = (d.text for d in docs)
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    for doc in iter_examples(ArithmeticConfig(n=int(sys.argv[1]) if len(sys.argv) > 1 else 10)):
        print(doc.text)
