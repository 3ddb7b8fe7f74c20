"""Synthetic arithmetic: the printed expression, evaluated independently, equals the value."""

from __future__ import annotations

import ast
import operator
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmstack.data.synthetic import (
    OPERATORS, ArithmeticConfig, depth, evaluate, example, generate, random_tree, render, split_example,
    write_examples,
)
from lmstack.data.sources import iter_documents
from lmstack.errors import ConfigError

_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
            ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def safe_eval(expr: str) -> int:
    """Evaluate integer arithmetic by walking Python's own parse tree (no eval())."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            return _AST_OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unexpected syntax: {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval"))


configs = st.builds(
    ArithmeticConfig,
    n=st.just(1),
    max_depth=st.integers(0, 5),
    ops=st.lists(st.sampled_from(list(OPERATORS)), min_size=1, max_size=5, unique=True).map(tuple),
    low=st.integers(-20, 5),
    high=st.integers(5, 50),
    leaf_prob=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)


@given(configs, st.integers(0, 2**32))
def test_printed_expression_evaluates_to_printed_value(cfg, seed):
    tree = random_tree(random.Random(seed), cfg.check())
    expr, value = split_example(example(tree))
    assert safe_eval(expr) == value == evaluate(tree)
    assert depth(tree) <= cfg.max_depth


@given(configs, st.integers(0, 2**32))
def test_leaves_are_in_range_and_only_chosen_operators_appear(cfg, seed):
    tree = random_tree(random.Random(seed), cfg.check())
    stack = [tree]
    while stack:
        t = stack.pop()
        if isinstance(t, int):
            assert cfg.low <= t <= cfg.high
        else:
            assert t[0] in cfg.ops
            stack += [t[1], t[2]]


@given(st.integers(0, 2**32))
def test_division_never_by_zero(seed):
    cfg = ArithmeticConfig(n=200, ops=("//", "%"), low=0, high=2, max_depth=3, seed=seed)
    for doc in generate(cfg):
        expr, value = split_example(doc.text)
        assert safe_eval(expr) == value  # A zero divisor would raise ZeroDivisionError here.


def test_seeded_and_sized():
    a = generate(ArithmeticConfig(n=50, seed=7))
    assert [d.text for d in a] == [d.text for d in generate(ArithmeticConfig(n=50, seed=7))]
    assert [d.text for d in a] != [d.text for d in generate(ArithmeticConfig(n=50, seed=8))]
    assert len(a) == 50 and len({d.source for d in a}) == 50


def test_render_is_fully_parenthesized():
    assert render(("*", ("+", 1, 2), -3)) == "((1+2)*(-3))"
    assert safe_eval(render(("*", ("+", 1, 2), -3))) == -9


@pytest.mark.parametrize(
    "kw", [{"ops": ("^",)}, {"ops": ()}, {"low": 5, "high": 1}, {"leaf_prob": 2.0}, {"max_depth": -1},
           {"ops": ("//",), "low": 0, "high": 0}],
)
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        ArithmeticConfig(**kw).check()


def test_write_examples_reads_back_through_sources(tmp_path):
    cfg = ArithmeticConfig(n=5, seed=4)
    expected = [d.text for d in generate(cfg)]
    jsonl = write_examples(tmp_path / "arith.jsonl", cfg)
    assert [d.text for d in iter_documents(str(jsonl))] == expected
    txt = write_examples(tmp_path / "arith.txt", cfg)
    assert [d.text for d in iter_documents(str(txt))] == ["\n".join(expected) + "\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arith.jsonl", "arith.txt"]
