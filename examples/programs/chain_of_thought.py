"""Chain of thought with a numeric answer hole: the model reasons in free text (stopped at
the answer line), then the answer is a typed hole (`type=int`: a number, parsed).

    python examples/programs/chain_of_thought.py

Runs on SmolLM2; tests run it sampled on a tiny random model (the answer is always an int).
"""

from __future__ import annotations

from lmstack.program import gen

SHOT = ("Question: Tom has 3 apples and buys 4 more. How many apples does he have?\n"
        "Reasoning: He starts with 3 and adds 4, so 3 + 4 = 7.\nAnswer: 7\n\n")


def reason(s, question: str) -> None:
    """Reason, then answer with a number."""
    s += SHOT + "Question: " + question + "\nReasoning:"
    s += gen("reasoning", max_tokens=48, stop=["\n", "Answer:"])
    s += "\nAnswer: " + gen("answer", type=int, max_tokens=6)


PROGRAM, INPUTS = reason, {"question": "A box holds 6 eggs. How many eggs are in 5 boxes?"}

if __name__ == "__main__":
    from lmstack.infer import Engine
    from lmstack.program import run

    s = run(reason, Engine.load("smollm2"), **INPUTS)
    print(s.text, "\n", s["answer"], s.stats)
