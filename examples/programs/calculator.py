"""A tool call: the model writes an arithmetic expression under a regex, a Python function
(the tool) computes it, and its result is spliced back into the text before the model goes on.

    python examples/programs/calculator.py

Runs on SmolLM2; tests run it sampled on a tiny random model (the result is always exact).
"""

from __future__ import annotations

import ast
import operator

from lmstack.program import gen

EXPRESSION = r"[0-9]{1,4} ?[-+*] ?[0-9]{1,4}"
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
SHOT = ("Question: What is 12 times 11?\nCalculator: 12 * 11 = 132\n"
        "Answer: 12 times 11 is 132.\n\n")


def calculate(expression: str) -> int:
    """The tool: a + b, a - b or a * b of integers (no eval).

    >>> calculate("12 * 11"), calculate("7-9")
    (132, -2)
    """
    node = ast.parse(expression, mode="eval").body
    return OPS[type(node.op)](node.left.value, node.right.value)


def word_problem(s, question: str) -> None:
    """Expression (constrained), tool result (Python), then the model's sentence."""
    s += SHOT + "Question: " + question + "\nCalculator: "
    s += gen("expression", regex=EXPRESSION, max_tokens=12)
    s += " = " + str(calculate(s["expression"])) + "\nAnswer:"
    s += gen("answer", max_tokens=24, stop="\n")


PROGRAM, INPUTS = word_problem, {"question": "What is 23 plus 58?"}

if __name__ == "__main__":
    from lmstack.infer import Engine
    from lmstack.program import run

    s = run(word_problem, Engine.load("smollm2"), **INPUTS)
    print(s.text, "\n", s.stats)
