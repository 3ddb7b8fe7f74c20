"""Structured extraction with the real model: 30 short texts -> a JSON object with typed
fields, unconstrained vs constrained by the JSON Schema (issue 15, "Must show").

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/extraction.py                  # greedy
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/extraction.py --temperatures 0,1 --seed 0
    .venv/bin/python benchmarks/extraction.py --limit 3 --out runs/extraction-smoke.jsonl

Data: benchmarks/data/extraction.jsonl (written for this benchmark: 10 people, 10 orders, 10
events; easy, medium and hard texts) and its three schemas in
benchmarks/data/extraction_schemas.json. Each text is put to SmolLM2-135M-Instruct through its
chat template with the same instruction in both modes (the schema's keys, types and
descriptions as a list), stopping at the end of the turn:

- unconstrained: the model writes what it likes;
- constrained: `json_schema=` the example's schema (the engine's default fast engine).

Per mode: the fraction of replies that parse (`json.loads` of the whole reply, after stripping
a Markdown code fence, in both modes), the fraction that also validate against the schema
(`jsonschema`, Draft 2020-12); the same two for a lenient reading (the first JSON value found
anywhere in the reply, as a forgiving client would take it); per-field accuracy against the gold
object (strings equal after case folding and collapsing whitespace; numbers equal as numbers;
booleans and null as themselves; a reply that does not parse scores every field wrong); mean
generated tokens and wall time per reply (prefill, constraint compile and decode together).
Per-example results go to --out as JSONL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SYSTEM = "You are a precise information-extraction assistant. You reply with JSON only."
_MISSING = object()  # a key the prediction lacks
FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


# ---- the data ----------------------------------------------------------------------------
@dataclass
class Example:
    id: str
    schema: str          # a key of the schemas file
    difficulty: str      # easy, medium or hard
    text: str
    gold: dict


def load_schemas(path: Path = DATA / "extraction_schemas.json") -> dict[str, dict]:
    """The extraction schemas by name."""
    return json.loads(Path(path).read_text())


def load_examples(path: Path = DATA / "extraction.jsonl") -> list[Example]:
    """The examples of a JSONL file, one object a line."""
    lines = Path(path).read_text().splitlines()
    return [Example(**json.loads(line)) for line in lines if line.strip()]


def instruction(schema: dict, text: str) -> str:
    """The user message: the keys to extract, with their types and descriptions, then the text.

    >>> s = {"properties": {"age": {"type": "integer", "description": "in years"},
    ...                     "kind": {"enum": ["a", "b"]}}}
    >>> print(instruction(s, "Bo is 3."))
    Extract the fields below from the text. Reply with only a JSON object with exactly these keys:
    - age (integer): in years
    - kind (one of "a", "b")
    <BLANKLINE>
    Text: Bo is 3.
    """
    head = "Extract the fields below from the text. Reply with only a JSON object with exactly"
    lines = [head + " these keys:"]
    for key, prop in schema["properties"].items():
        line = f"- {key} ({type_name(prop)})"
        lines.append(line + (f": {prop['description']}" if "description" in prop else ""))
    return "\n".join(lines) + f"\n\nText: {text}"


def type_name(prop: dict) -> str:
    """A property's type in words.

    >>> type_name({"type": ["string", "null"]}), type_name({"type": "boolean"})
    ('string or null', 'true or false')
    """
    if "enum" in prop:
        return "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    return " or ".join("true or false" if t == "boolean" else t for t in types)


# ---- scoring (pure) ----------------------------------------------------------------------
def strip_fence(text: str) -> str:
    """The text inside a Markdown code fence (```json ... ```) if the reply is one, else the
    reply itself.

    >>> strip_fence('```json\\n{"a": 1}\\n```'), strip_fence('{"a": 1}')
    ('{"a": 1}', '{"a": 1}')
    """
    m = FENCE.match(text)
    return m.group(1) if m else text


def parse_strict(text: str) -> tuple[bool, object]:
    """(parsed, value): the whole reply, after stripping a code fence, is one JSON value.

    >>> parse_strict('{"a": 1}\\nHope this helps!')
    (False, None)
    """
    try:
        return True, json.loads(strip_fence(text))
    except json.JSONDecodeError:
        return False, None


def parse_lenient(text: str) -> tuple[bool, object]:
    """(parsed, value): the first JSON object found anywhere in the reply.

    >>> parse_lenient('Sure! {"a": 1} Hope this helps.')
    (True, {'a': 1})
    """
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            return True, decoder.raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue
    return False, None


def normalize(value: object) -> object:
    """A value as compared with the gold one: strings case-folded with whitespace collapsed,
    numbers (not booleans) as floats, everything else as it is.

    >>> normalize("  Maria   LOPEZ "), normalize(12), normalize(True)
    ('maria lopez', 12.0, True)
    """
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def field_matches(pred: object, gold: dict) -> dict[str, bool]:
    """For each gold key, whether the prediction holds an equal value (same JSON type).

    >>> field_matches({"name": "maria lopez", "age": "34", "ok": 1}, {"name": "Maria Lopez",
    ...               "age": 34, "ok": True, "email": None})
    {'name': True, 'age': False, 'ok': False, 'email': False}
    """
    pred = pred if isinstance(pred, dict) else {}
    out = {}
    for key, want in gold.items():
        got = pred.get(key, _MISSING)
        a, b = normalize(got), normalize(want)
        same_kind = type(a) is type(b)  # True vs 1 and "34" vs 34 differ
        out[key] = same_kind and (math.isclose(a, b, abs_tol=1e-9) if isinstance(a, float) else a == b)
    return out



def validation_errors(value: object, schema: dict) -> list[str]:
    """jsonschema's messages for `value` against `schema` (empty: valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(value)]


@dataclass
class Score:
    parsed: bool
    valid: bool
    lenient_parsed: bool
    lenient_valid: bool
    fields: dict[str, bool]           # from the strict parse
    lenient_fields: dict[str, bool]   # from the lenient parse
    errors: list[str] = field(default_factory=list)   # why the strict parse is invalid


def score(text: str, schema: dict, gold: dict) -> Score:
    """Parse, validate and compare one reply, strictly and leniently."""
    ok, value = parse_strict(text)
    errors = validation_errors(value, schema) if ok else ["does not parse"]
    lok, lvalue = parse_lenient(text)
    lvalid = lok and not validation_errors(lvalue, schema)
    return Score(ok, ok and not errors, lok, lvalid, field_matches(value if ok else None, gold),
                 field_matches(lvalue if lok else None, gold), errors)


def summarize(records: list[dict]) -> dict:
    """Fractions, field accuracy and means over the records of one mode."""
    n = len(records)
    fields = [v for r in records for v in r["fields"].values()]
    lfields = [v for r in records for v in r["lenient_fields"].values()]
    mean = lambda key: sum(r[key] for r in records) / n
    return {"n": n, "parse": mean("parsed"), "valid": mean("valid"),
            "lenient_parse": mean("lenient_parsed"), "lenient_valid": mean("lenient_valid"),
            "field_acc": sum(fields) / len(fields), "lenient_field_acc": sum(lfields) / len(lfields),
            "exact": sum(all(r["fields"].values()) for r in records) / n,
            "tokens": mean("tokens"), "seconds": mean("seconds"),
            "tok_s": sum(r["tokens"] for r in records) / sum(r["seconds"] for r in records),
            "length_cut": sum(r["finish_reason"] == "length" for r in records)}


# ---- the run -----------------------------------------------------------------------------
def run_mode(engine, template, examples: list[Example], schemas: dict[str, dict],
             constrained: bool, temperature: float, args) -> list[dict]:
    """Generate and score every example in one mode; one record each."""
    from rich.progress import track

    stops = template.stop_tokens(engine.tokenizer)
    label = f"{'constrained' if constrained else 'unconstrained'} T={temperature:g}"
    records = []
    for ex in track(examples, description=label):
        schema = schemas[ex.schema]
        prompt = template.render([{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": instruction(schema, ex.text)}])
        extra = {"json_schema": schema} if constrained else {}
        t0 = time.perf_counter()
        c = engine.generate(prompt, temperature=temperature, max_new_tokens=args.max_new_tokens,
                            stop_token_ids=stops, seed=args.seed, **extra)
        seconds = time.perf_counter() - t0
        s = score(c.text, schema, ex.gold)
        records.append({"id": ex.id, "schema": ex.schema, "difficulty": ex.difficulty,
                        "mode": "constrained" if constrained else "unconstrained",
                        "temperature": temperature, "output": c.text,
                        "finish_reason": c.finish_reason, "complete": c.complete,
                        "tokens": len(c.tokens), "seconds": seconds, **asdict(s)})
    return records


def compile_times(engine, schemas: dict[str, dict]) -> dict[str, float]:
    """Milliseconds to compile each schema against the vocabulary (fast engine), after one
    warm-up compile that builds the engine's view of the vocabulary."""
    engine.constraint(engine.config(json_schema={"type": "object"}))  # vocabulary set-up, once
    out = {}
    for name, schema in schemas.items():
        t0 = time.perf_counter()
        engine.constraint(engine.config(json_schema=schema))
        out[name] = 1000 * (time.perf_counter() - t0)
    return out


def print_tables(title: str, modes: dict[str, dict], by_field: dict[str, dict[str, float]],
                 by_difficulty: dict[str, dict[str, float]]) -> None:
    """The summary, per-field and per-difficulty tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    t = Table(title=title)
    for col in ("mode", "parse", "valid", "lenient parse", "lenient valid", "field acc",
                "lenient field acc", "all fields right", "length cut", "mean tokens",
                "mean s/reply", "tok/s"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for name, s in modes.items():
        t.add_row(name, *(f"{s[k]:.0%}" for k in ("parse", "valid", "lenient_parse",
                                                   "lenient_valid", "field_acc",
                                                   "lenient_field_acc", "exact")),
                  str(s["length_cut"]), f"{s['tokens']:.1f}", f"{s['seconds']:.2f}",
                  f"{s['tok_s']:.1f}")
    console.print(t)
    for caption, rows in (("Field accuracy (strict parse)", by_field),
                          ("Field accuracy by difficulty", by_difficulty)):
        t = Table(title=caption)
        t.add_column("field")
        for name in modes:
            t.add_column(name, justify="right")
        for key, accs in rows.items():
            t.add_row(key, *(f"{accs[m]:.0%}" for m in modes))
        console.print(t)


def breakdown(records_by_mode: dict[str, list[dict]], key) -> dict[str, dict[str, float]]:
    """Field accuracy per group (`key(record, field)`) and mode."""
    out: dict[str, dict[str, list[bool]]] = {}
    for mode, records in records_by_mode.items():
        for r in records:
            for f, ok in r["fields"].items():
                out.setdefault(key(r, f), {}).setdefault(mode, []).append(ok)
    return {g: {m: sum(v) / len(v) for m, v in accs.items()} for g, accs in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", type=Path, default=DATA / "extraction.jsonl")
    p.add_argument("--schemas", type=Path, default=DATA / "extraction_schemas.json")
    p.add_argument("--temperatures", default="0", help="comma-separated, e.g. 0,1")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled modes")
    p.add_argument("--modes", default="unconstrained,constrained")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--limit", type=int, default=0, help="only the first N examples")
    p.add_argument("--out", type=Path, default=Path("runs/extraction.jsonl"))
    args = p.parse_args(argv)

    import torch

    from lmstack.infer import Engine
    from lmstack.models.directory import model_chat_template

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    schemas, examples = load_schemas(args.schemas), load_examples(args.data)
    examples = examples[:args.limit] if args.limit else examples
    engine, template = Engine.load(args.model), model_chat_template(args.model)
    load_before = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"load average {load_before[0]:.2f}; schema compile ms: "
          + ", ".join(f"{k} {v:.1f}" for k, v in compile_times(engine, schemas).items()))
    records_by_mode = {}
    for temperature in (float(x) for x in args.temperatures.split(",")):
        for constrained in (m == "constrained" for m in args.modes.split(",")):
            name = f"{'constrained' if constrained else 'unconstrained'} T={temperature:g}"
            records_by_mode[name] = run_mode(engine, template, examples, schemas, constrained,
                                             temperature, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for records in records_by_mode.values():
            for r in records:
                f.write(json.dumps(r) + "\n")
    modes = {m: summarize(rs) for m, rs in records_by_mode.items()}
    n = len(examples)
    print_tables(f"Extraction, {args.model} ({n} texts, max_new_tokens {args.max_new_tokens})",
                 modes, breakdown(records_by_mode, lambda r, f: f"{r['schema']}.{f}"),
                 breakdown(records_by_mode, lambda r, f: r["difficulty"]))
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"per-example results: {args.out}")


if __name__ == "__main__":
    main()
