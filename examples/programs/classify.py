"""A classifier with `select`: each review's label is scored over the options in one batched
forward (not generated), and `fork` classifies several reviews after one shared instruction
(computed once), `join` gathering the labels.

    python examples/programs/classify.py
    lmstack query examples/programs/classify.lmql --model smollm2 --arg review="Broke in a day"

Runs on SmolLM2; tests run it sampled on a tiny random model.
"""

from __future__ import annotations

from lmstack.program import select

LABELS = ["positive", "negative", "neutral"]
INSTRUCTION = ("Classify the sentiment of each product review as positive, negative or "
               "neutral.\n\nReview: I love it, works perfectly.\nSentiment: positive\n\n")


def classify(s, reviews: list[str]) -> None:
    """One branch per review after the shared instruction; labels joined into s["label"]."""
    s += INSTRUCTION
    branches = s.fork(len(reviews))
    for branch, review in zip(branches, reviews):
        branch += "Review: " + review + "\nSentiment: " + select("label", LABELS)
    s.join(branches)


PROGRAM, INPUTS = classify, {"reviews": ["Stopped working after two days.",
                                         "It is a phone. It makes calls.",
                                         "Best purchase this year!"]}

if __name__ == "__main__":
    from lmstack.infer import Engine
    from lmstack.program import run

    s = run(classify, Engine.load("smollm2"), **INPUTS)
    print(list(zip(INPUTS["reviews"], s["label"])), s.stats)
