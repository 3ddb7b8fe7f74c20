"""Structured generation engines on a suite of JSON Schemas: compile time, per-token mask time,
the fraction of schemas each supports (issue 15).

    .venv/bin/python benchmarks/structured.py                          # every engine, every schema
    .venv/bin/python benchmarks/structured.py --engines fast,xgrammar --schemas 'ref_*'
    .venv/bin/python benchmarks/structured.py --generate --samples 2   # also decode with SmolLM2

Engines: our fast engine (`compile_fast`, llguidance behind our Matcher), llguidance and
xgrammar called directly (their own bitmask APIs, no bool mask), and our reference engine
(`compile_reference`) when that module exists. The vocabulary is SmolLM2's (49,152 ids) through
our tokenizer. Each schema in benchmarks/schemas/ (README there) carries a valid instance and
most an invalid one. For each engine and schema: compile, then walk the instance's tokens
(`json.dumps`, separators ", " and ": ", encoded by our tokenizer) timing the mask before every
token and the end id; the instance must be allowed all the way. The invalid instance must be
refused somewhere (a token or the end id not allowed): an engine that compiles a schema but
accepts its invalid instance silently ignored a keyword. Supported = compiles, accepts the valid
instance, refuses the invalid one. Whitespace: every engine allows at most one whitespace
character between JSON tokens (llguidance whitespace_pattern, xgrammar max_whitespace_cnt=1).

--generate samples with SmolLM2 under the fast engine (a mask loop over the model's forward, in
this script only), greedy and temperature 1, and validates every output with jsonschema.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

SCHEMAS = Path(__file__).resolve().parent / "schemas"
WS = r"[\x20\x0A]"  # at most one space or newline between JSON tokens (as our engines)
console = Console(width=150)


# ---- the suite ---------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    description: str
    schema: dict
    instance: object
    invalid: object = None
    has_invalid: bool = False


def load_cases(pattern: str = "*") -> list[Case]:
    """benchmarks/schemas/*.json whose name matches `pattern`, sorted."""
    cases = []
    for path in sorted(SCHEMAS.glob("*.json")):
        if fnmatch.fnmatch(path.stem, pattern):
            d = json.loads(path.read_text())
            cases.append(Case(path.stem, d["description"], d["schema"], d["instance"],
                              d.get("invalid"), "invalid" in d))
    return cases


def format_checker():
    """jsonschema's format checker plus date-time and time (which it leaves to an extra
    package), by RFC 3339's grammar and the standard library's parser."""
    import jsonschema

    checker = jsonschema.FormatChecker()
    zone = r"(Z|[+-]\d\d:\d\d)"

    @checker.checks("date-time", raises=ValueError)
    def date_time(s) -> bool:
        return not isinstance(s, str) or bool(
            re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?" + zone, s)
            and datetime.datetime.fromisoformat(s))

    @checker.checks("time", raises=ValueError)
    def time_(s) -> bool:
        return not isinstance(s, str) or bool(
            re.fullmatch(r"\d\d:\d\d:\d\d(\.\d+)?" + zone, s) and datetime.time.fromisoformat(s))

    return checker


def validate(schema: dict, instance) -> list[str]:
    """jsonschema's errors for `instance` (empty: valid), formats checked."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    return [e.message for e in cls(schema, format_checker=format_checker()).iter_errors(instance)]


def instance_text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---- the engines ---------------------------------------------------------------------------
class FastEngine:
    """Ours: compile_fast, then Matcher.allowed() (a numpy bool mask) per token."""

    name = "fast (ours)"

    def __init__(self, vocab) -> None:
        from lmstack.infer.structured.constraint import Constraint
        from lmstack.infer.structured.fast import compile_fast, lltokenizer

        self.vocab, self._constraint, self._compile = vocab, Constraint, compile_fast
        start = time.perf_counter()
        lltokenizer(vocab)
        self.setup_s = time.perf_counter() - start

    def compile(self, schema):
        return self._compile(self._constraint("json_schema", schema), self.vocab, cache=False)

    def start(self, compiled):
        return compiled.matcher()

    def mask(self, m):
        return m.allowed()

    def allows(self, mask, token_id: int) -> bool:
        return bool(mask[token_id])

    def advance(self, m, token_id: int) -> None:
        m.advance(token_id)


class ReferenceEngine(FastEngine):
    """Our readable reference engine, same interface."""

    name = "reference (ours)"

    def __init__(self, vocab) -> None:
        from lmstack.infer.structured.constraint import Constraint
        from lmstack.infer.structured.reference import compile_reference

        self.vocab, self._constraint, self.setup_s = vocab, Constraint, 0.0
        self._compile = lambda c, v, cache=False: compile_reference(c, v)


def bit(bits: np.ndarray, token_id: int) -> bool:
    return bool((int(bits[token_id >> 5]) >> (token_id & 31)) & 1)


class LLGuidanceEngine:
    """llguidance called directly: LLMatcher, its bitmask written into an int32 buffer."""

    name = "llguidance"

    def __init__(self, vocab) -> None:
        import llguidance

        from lmstack.infer.structured.fast import VocabWrapper

        self.llg = llguidance
        start = time.perf_counter()
        self.tokenizer = llguidance.LLTokenizer(VocabWrapper(vocab), n_vocab=vocab.size,
                                                eos_token=list(vocab.end_ids))
        self.setup_s = time.perf_counter() - start
        self.bits = np.zeros((vocab.size + 31) // 32, dtype=np.int32)

    def compile(self, schema):
        schema = {**schema, "x-guidance": {"whitespace_pattern": WS}}
        grammar = '%llguidance {"no_forcing": true}\nstart: %json ' + json.dumps(schema)
        m = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error().splitlines()[0])
        return m

    def start(self, compiled):
        return compiled.deep_copy()

    def mask(self, m):
        m.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)
        return self.bits

    def allows(self, bits, token_id: int) -> bool:
        return bit(bits, token_id)

    def advance(self, m, token_id: int) -> None:
        m.consume_token(token_id)


class XGrammarEngine:
    """xgrammar called directly: GrammarMatcher.fill_next_token_bitmask into an int32 buffer."""

    name = "xgrammar"

    def __init__(self, vocab) -> None:
        import xgrammar

        self.xgr = xgrammar
        start = time.perf_counter()
        info = xgrammar.TokenizerInfo([b if b is not None else b"" for b in vocab.token_bytes],
                                      xgrammar.VocabType.RAW, vocab_size=vocab.size,
                                      stop_token_ids=list(vocab.end_ids))
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self.setup_s = time.perf_counter() - start
        self.bits = np.zeros((1, (vocab.size + 31) // 32), dtype=np.int32)

    def compile(self, schema):
        # strict_mode=False: JSON Schema's own defaults (additional properties allowed)
        return self.compiler.compile_json_schema(schema, any_whitespace=True,
                                                 max_whitespace_cnt=1, strict_mode=False)

    def start(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m):
        m.fill_next_token_bitmask(self.bits)
        return self.bits[0]

    def allows(self, bits, token_id: int) -> bool:
        return bit(bits, token_id)

    def advance(self, m, token_id: int) -> None:
        m.accept_token(token_id)


ENGINES = {"fast": FastEngine, "llguidance": LLGuidanceEngine, "xgrammar": XGrammarEngine,
           "reference": ReferenceEngine}


# ---- measuring -------------------------------------------------------------------------------
@dataclass
class Result:
    compiled: bool = False
    error: str = ""
    compile_s: float = 0.0
    accepts: bool = False
    refuses: bool | None = None  # None: the case has no invalid instance
    mask_s: list[float] = field(default_factory=list)
    packed: list[bytes] = field(default_factory=list)  # bool-mask engines: each mask, packed

    @property
    def supported(self) -> bool:
        return self.compiled and self.accepts and self.refuses is not False


def walk(engine, compiled, ids: list[int], end_id: int, result: Result | None) -> bool:
    """Whether every token of `ids`, then the end id, is allowed; mask times into `result`."""
    state = engine.start(compiled)
    for token_id in [*ids, end_id]:
        start = time.perf_counter()
        mask = engine.mask(state)
        if result is not None:
            result.mask_s.append(time.perf_counter() - start)
            if mask.dtype == bool:
                result.packed.append(np.packbits(mask).tobytes())
        if not engine.allows(mask, token_id):
            return False
        if token_id != end_id:
            engine.advance(state, token_id)
    return True


def measure(engine, case: Case, tok, end_id: int) -> Result:
    r = Result()
    start = time.perf_counter()
    try:
        compiled = engine.compile(case.schema)
    except Exception as e:  # noqa: BLE001 — every engine has its own error classes
        r.error = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return r
    r.compile_s, r.compiled = time.perf_counter() - start, True
    r.accepts = walk(engine, compiled, tok.encode_ordinary(instance_text(case.instance)),
                     end_id, r)
    if case.has_invalid:
        r.refuses = not walk(engine, compiled, tok.encode_ordinary(instance_text(case.invalid)),
                             end_id, None)
    return r


def why(r: Result) -> str:
    """Why an engine does not support a case."""
    return r.error or ("refuses the valid instance" if not r.accepts else "accepts the invalid")


def summarize(results: dict[str, Result], names: list[str] | None = None) -> dict:
    """Compile and mask figures over the cases in `names` (default: the supported ones)."""
    names = names if names is not None else [n for n, r in results.items() if r.supported]
    compile_ms = [results[n].compile_s * 1e3 for n in names if results[n].compiled]
    masks = np.array([t for n in names for t in results[n].mask_s]) * 1e6
    return {"schemas": len(names),
            "compile_ms_mean": float(np.mean(compile_ms)) if compile_ms else float("nan"),
            "compile_ms_p50": float(np.median(compile_ms)) if compile_ms else float("nan"),
            "compile_ms_max": float(np.max(compile_ms)) if compile_ms else float("nan"),
            "masks": int(masks.size),
            "mask_us_mean": float(masks.mean()) if masks.size else float("nan"),
            "mask_us_p50": float(np.median(masks)) if masks.size else float("nan"),
            "mask_us_p99": float(np.percentile(masks, 99)) if masks.size else float("nan"),
            "mask_us_max": float(masks.max()) if masks.size else float("nan")}


def print_cases(cases: list[Case], all_results: dict[str, dict[str, Result]]) -> None:
    table = Table(title="per schema: compile ms / mean mask µs (✗ = unsupported: why)")
    table.add_column("schema")
    for name in all_results:
        table.add_column(name)
    for case in cases:
        row = [case.name]
        for results in all_results.values():
            r = results[case.name]
            if not r.compiled:
                row.append(f"✗ {r.error[:40]}")
            elif not r.accepts:
                row.append("✗ refuses valid")
            elif r.refuses is False:
                row.append("✗ accepts invalid")
            else:
                row.append(f"{r.compile_s * 1e3:.1f} / {np.mean(r.mask_s) * 1e6:.0f}")
        table.add_row(*row)
    console.print(table)


def print_summary(title: str, summaries: dict[str, dict], support: dict[str, str]) -> None:
    table = Table(title=title)
    for col in ("engine", "supported", "schemas", "compile ms mean", "compile ms p50",
                "mask µs mean", "mask µs p50", "mask µs p99", "mask µs max", "masks"):
        table.add_column(col)
    for name, s in summaries.items():
        table.add_row(name, support[name], str(s["schemas"]), f"{s['compile_ms_mean']:.2f}",
                      f"{s['compile_ms_p50']:.2f}", f"{s['mask_us_mean']:.1f}",
                      f"{s['mask_us_p50']:.1f}", f"{s['mask_us_p99']:.1f}",
                      f"{s['mask_us_max']:.1f}", str(s["masks"]))
    console.print(table)


def print_ratios(summaries: dict[str, dict], base: str) -> None:
    b = summaries[base]
    for name, s in summaries.items():
        if name != base:
            ratio = s["compile_ms_mean"] / b["compile_ms_mean"]
            console.print(f"  {name} / {base}: compile x{ratio:.2f}, "
                          f"mask mean x{s['mask_us_mean'] / b['mask_us_mean']:.2f}, "
                          f"mask p99 x{s['mask_us_p99'] / b['mask_us_p99']:.2f}")


def print_agreement(cases: list[Case], all_results: dict[str, dict[str, Result]], vocab) -> dict:
    """How many masks along the valid walks are identical in our two engines, and how many
    once the ids whose bytes hold U+007F are left out (llguidance never allows a raw DEL in a
    string; RFC 8259 and the reference do)."""
    a, b = all_results.get("fast (ours)"), all_results.get("reference (ours)")
    if a is None or b is None:
        return {}
    keep = np.array([t is None or 0x7F not in t for t in vocab.token_bytes])
    same = same_but_del = total = 0
    differ = []
    for case in cases:
        pa, pb = a[case.name].packed, b[case.name].packed
        n = min(len(pa), len(pb))
        k = sum(x == y for x, y in zip(pa[:n], pb[:n]))
        unpack = [np.unpackbits(np.frombuffer(x, np.uint8), count=vocab.size).view(bool)
                  for x in (*pa[:n], *pb[:n])]
        k_del = sum(np.array_equal(unpack[i][keep], unpack[n + i][keep]) for i in range(n))
        same, same_but_del, total = same + k, same_but_del + k_del, total + n
        if k_del < n:
            differ.append(f"{case.name} ({n - k_del})")
    console.print(f"fast vs reference: {same}/{total} masks identical along the valid walks, "
                  f"{same_but_del}/{total} leaving out the {int((~keep).sum())} ids with a DEL "
                  f"byte; masks that still differ: {', '.join(differ) or 'none'}")
    return {"identical": same, "identical_but_del": same_but_del, "compared": total,
            "differ": differ}


PROMPT = ("<|im_start|>user\nReply with only a JSON value for this JSON Schema ({description})."
          "\n{schema}<|im_end|>\n<|im_start|>assistant\n")


def generate_all(args, cases: list[Case], supported: set[str]) -> dict:
    """Sample with the model under the fast engine (Engine.generate(json_schema=...)), greedy
    and at temperature 1; validate each output; compare decode speed with unconstrained."""
    import torch

    from lmstack.infer import Engine

    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model)
    counts = {"greedy": [0, 0, 0], "temperature 1": [0, 0, 0]}  # valid, cut by length, total
    failures, cut_short = [], []
    timed = {"constrained": [0, 0.0], "unconstrained": [0, 0.0]}  # tokens, seconds
    for case in track([c for c in cases if c.name in supported], description="generate",
                      console=console):
        prompt = PROMPT.format(description=case.description, schema=json.dumps(case.schema))
        runs = [("greedy", 0.0, 0)] + [("temperature 1", 1.0, s) for s in range(args.samples)]
        for label, temperature, seed in runs:
            start = time.perf_counter()
            out = engine.generate(prompt, json_schema=case.schema, temperature=temperature,
                                  seed=seed, max_new_tokens=args.max_new_tokens)
            if label == "greedy":  # against as many unconstrained tokens from the same prompt
                timed["constrained"][0] += len(out.tokens)
                timed["constrained"][1] += time.perf_counter() - start
                start = time.perf_counter()
                plain = engine.generate(prompt, temperature=0.0, ignore_eos=True,
                                        max_new_tokens=max(1, len(out.tokens)))
                timed["unconstrained"][0] += len(plain.tokens)
                timed["unconstrained"][1] += time.perf_counter() - start
            c = counts[label]
            c[2] += 1
            if out.finish_reason == "length":
                c[1] += 1
                cut_short.append(f"{case.name} ({label})")
                continue
            try:
                errors = validate(case.schema, json.loads(out.text))
            except json.JSONDecodeError as e:
                errors = [f"not JSON: {e}"]
            c[0] += not errors
            if errors:
                failures.append((case.name, label, out.text[:80], errors[0][:80]))
    for label, (valid, cut, total) in counts.items():
        console.print(f"{label}: {valid}/{total - cut} finished outputs valid "
                      f"({cut} cut short by max_new_tokens={args.max_new_tokens})")
    console.print(f"  cut short: {', '.join(cut_short) or 'none'}")
    for name, label, text, err in failures:
        console.print(f"  invalid: {name} [{label}] {text!r}: {err}")
    speed = {k: n / t if t else float("nan") for k, (n, t) in timed.items()}
    ratio = speed["constrained"] / speed["unconstrained"]
    console.print(f"decode: constrained {speed['constrained']:.1f} tok/s, unconstrained "
                  f"{speed['unconstrained']:.1f} tok/s (x{ratio:.2f}; greedy, the same prompts "
                  "and token counts, prefill included)")
    return {"counts": counts, "failures": failures, "cut_short": cut_short, "tok_per_s": speed}


def build_engines(names: list[str], vocab) -> dict:
    engines = {}
    for key in names:
        try:
            engine = ENGINES[key](vocab)
        except ImportError as e:
            console.print(f"{key}: {'not yet' if key == 'reference' else 'not installed'} ({e})")
            continue
        engines[engine.name] = engine
    return engines


def run(args) -> dict:
    from lmstack.infer.structured.vocab import TokenVocab
    from lmstack.models.directory import load_tokenizer

    tok = load_tokenizer(args.model)
    vocab = TokenVocab.from_tokenizer(tok)
    cases = load_cases(args.schemas)
    for case in cases:  # the suite itself must be right
        assert not validate(case.schema, case.instance), case.name
        assert not case.has_invalid or validate(case.schema, case.invalid), case.name
    engines = build_engines(args.engines.split(","), vocab)
    all_results = {}
    for name, engine in engines.items():
        all_results[name] = {c.name: measure(engine, c, tok, vocab.end_ids[0])
                             for c in track(cases, description=f"{name:18}", console=console)}
    print_cases(cases, all_results)
    support = {n: f"{sum(r.supported for r in res.values())}/{len(cases)}"
               for n, res in all_results.items()}
    own = {n: summarize(res) for n, res in all_results.items()}
    common = [c.name for c in cases if all(res[c.name].supported for res in all_results.values())]
    shared = {n: summarize(res, common) for n, res in all_results.items()}
    print_summary("each engine over the schemas it supports", own, support)
    print_summary(f"every engine over the {len(common)} schemas all support", shared, support)
    if "fast (ours)" in shared and common:
        print_ratios(shared, "fast (ours)")
    for name, engine in engines.items():
        console.print(f"{name}: vocabulary setup {engine.setup_s * 1e3:.0f} ms")
    agreement = print_agreement(cases, all_results, vocab)
    out = {"agreement": agreement, "vocab_size": vocab.size, "schemas": len(cases),
           "machine": platform.processor(),
           "own": own, "common": shared, "support": support,
           "unsupported": {n: {c: why(r) for c, r in res.items() if not r.supported}
                           for n, res in all_results.items()}}
    if args.generate:
        fast = all_results.get("fast (ours)", {})
        out["generate"] = generate_all(args, cases, {n for n, r in fast.items() if r.supported})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="whose tokenizer (and model, --generate)")
    p.add_argument("--engines", default="fast,llguidance,xgrammar,reference")
    p.add_argument("--schemas", default="*", help="glob over the schema names")
    p.add_argument("--generate", action="store_true", help="also sample with the model")
    p.add_argument("--samples", type=int, default=1, help="temperature-1 samples per schema")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch threads (--generate)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
