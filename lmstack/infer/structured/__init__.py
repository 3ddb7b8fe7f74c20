"""Structured generation: JSON, JSON Schema, regex, grammars and choices as token masks.

A constraint (`Constraint`: what the user asked for) compiles once per request against a
vocabulary (`TokenVocab`: each id's bytes) into a `CompiledConstraint`; each generated row gets
its own `Matcher` from it, which after every token says which ids may come next. Two engines
implement the same interface: a readable reference (automata and an Earley recognizer walked over
a byte trie of the vocabulary) and a fast one driven by a Rust library.

    .venv/bin/python -m pytest -q tests/infer/structured
"""
