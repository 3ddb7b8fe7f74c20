"""Prompt programs: text, typed holes the model fills, constraints as masks, Python control
flow between them, over one growing KV cache per branch (docs/programs.md).

    from lmstack.program import gen, program, select

    @program
    def qa(s, question):
        s += "Q: " + question + "\nA: " + gen("answer", max_tokens=20, stop="\n")
        s += "\nCorrect? " + select("ok", ["yes", "no"])

    s = qa.run(engine, question="What is 2 + 2?")     # an Engine, or a backend
    s["answer"], s["ok"], s.text, s.stats
"""

from __future__ import annotations

from lmstack import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "holes": ["gen", "select", "Gen", "Select"],
    "state": ["ProgramState", "ProgramError", "Decoder", "Stats", "fork", "join"],
    "runner": ["run", "run_all", "new_state", "program", "as_backend"],
    "local": ["LocalBackend"],
})
