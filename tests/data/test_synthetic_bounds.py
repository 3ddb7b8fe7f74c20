"""Synthetic arithmetic at any depth: sizes are bounded before drawing (from the expected tree
size, checked here against measured sizes), and drawing, printing and evaluating run without
recursion, so a deep tree is no RecursionError."""

from __future__ import annotations

import random
import re
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmstack.data.synthetic import (
    MAX_EXPECTED_NODES, ArithmeticConfig, depth, evaluate, expected_nodes, random_tree, render,
    write_examples,
)
from lmstack.errors import ConfigError


def size(tree) -> int:
    return 1 if isinstance(tree, int) else 1 + size(tree[1]) + size(tree[2])


def recursive_render(tree) -> str:
    """The recursive definition the iterative render must equal."""
    if isinstance(tree, int):
        return f"({tree})" if tree < 0 else str(tree)
    return f"({recursive_render(tree[1])}{tree[0]}{recursive_render(tree[2])})"


def recursive_evaluate(tree) -> int:
    if isinstance(tree, int):
        return tree
    a, b = recursive_evaluate(tree[1]), recursive_evaluate(tree[2])
    return {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0, "%": a % b if b else 0}[tree[0]]


@given(st.integers(0, 2**32), st.integers(0, 8), st.floats(0.0, 1.0))
def test_iterative_render_and_evaluate_match_the_recursive_definitions(seed, max_depth, leaf_prob):
    cfg = ArithmeticConfig(max_depth=max_depth, leaf_prob=leaf_prob, low=-5, high=9,
                           ops=("+", "-", "*", "//", "%"))
    tree = random_tree(random.Random(seed), cfg)
    assert render(tree) == recursive_render(tree)
    assert evaluate(tree) == recursive_evaluate(tree)


def test_a_tree_deeper_than_the_recursion_limit_prints_and_evaluates():
    tree = 1
    for _ in range(20_000):  # a left-leaning chain, 20 times Python's default recursion limit
        tree = ("+", tree, 1)
    assert depth(tree) == 20_000
    assert evaluate(tree) == 20_001
    assert render(tree).count("(") == 20_000


@pytest.mark.parametrize("max_depth,leaf_prob", [(6, 0.3), (4, 0.0), (10, 0.5), (8, 0.7)])
def test_expected_nodes_is_the_measured_mean(max_depth, leaf_prob):
    """The bound rests on this formula: the mean size of 3000 drawn trees is within 4 standard
    errors of it, and (negative control) far from the formula at a leaf_prob 0.05 off."""
    cfg = ArithmeticConfig(max_depth=max_depth, leaf_prob=leaf_prob, ops=("+", "*"))
    rng = random.Random(0)
    sizes = [size(random_tree(rng, cfg)) for _ in range(3000)]
    mean, se = statistics.fmean(sizes), statistics.stdev(sizes) / len(sizes) ** 0.5
    assert abs(mean - expected_nodes(max_depth, leaf_prob)) <= 4 * se + 1e-9
    if leaf_prob > 0:
        wrong = expected_nodes(max_depth, leaf_prob - 0.05)
        assert abs(mean - wrong) > 4 * se


@pytest.mark.parametrize("cfg,message", [
    (ArithmeticConfig(max_depth=1000), "gives trees of 4.7e+146 nodes on average"),
    (ArithmeticConfig(max_depth=10**6), "gives trees of inf nodes on average"),
    (ArithmeticConfig(max_depth=200), "use a depth of at most 23"),
    (ArithmeticConfig(max_depth=500, leaf_prob=0.9), "above the limit of 100"),
    (ArithmeticConfig(n=10**7, max_depth=10), "lower n (--n)"),
])
def test_sizes_that_would_not_finish_are_refused_up_front(cfg, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg.check()


def test_the_deepest_allowed_depth_is_just_within_the_limit():
    cfg = ArithmeticConfig()
    d = cfg.deepest()
    assert expected_nodes(d, cfg.leaf_prob) <= MAX_EXPECTED_NODES < expected_nodes(d + 1, cfg.leaf_prob)
    ArithmeticConfig(max_depth=d).check()


def test_a_refused_config_writes_nothing(tmp_path):
    with pytest.raises(ConfigError):
        write_examples(tmp_path / "a.txt", ArithmeticConfig(max_depth=200))
    assert list(tmp_path.iterdir()) == []
