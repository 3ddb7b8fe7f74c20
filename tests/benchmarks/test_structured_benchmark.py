"""benchmarks/structured.py: the schema suite is right, and a measurement runs end to end on a
byte-level vocabulary (no model needed)."""

from __future__ import annotations

from lmstack.infer.structured.vocab import TokenVocab
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.patterns import PATTERNS
from tests.benchmarks import load

bench = load("structured")


def test_the_suite_has_50_schemas_with_valid_and_invalid_instances():
    cases = bench.load_cases()
    assert len(cases) >= 50
    for case in cases:
        assert not bench.validate(case.schema, case.instance), case.name
        assert not case.has_invalid or bench.validate(case.schema, case.invalid), case.name


def test_measure_fast_and_llguidance_on_bytes():
    tok = Tokenizer(PATTERNS["gpt2"], [(34, 58, 256)], {"<|endoftext|>": 257})  # '":' merged
    vocab = TokenVocab.from_tokenizer(tok)
    cases = [c for c in bench.load_cases() if c.name in ("flat_person", "kw_unique_items",
                                                         "ref_tree")]
    for engine in (bench.FastEngine(vocab), bench.LLGuidanceEngine(vocab)):
        results = {c.name: bench.measure(engine, c, tok, vocab.end_ids[0]) for c in cases}
        assert results["flat_person"].supported and results["ref_tree"].supported
        assert not results["kw_unique_items"].compiled  # refused, not ignored
        summary = bench.summarize(results)
        assert summary["schemas"] == 2 and summary["masks"] > 50
