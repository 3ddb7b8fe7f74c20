"""Tokenizer benchmark: lmstack's BPE trainer and encoders side by side with Hugging Face
`tokenizers`, on the default corpus (the Python standard library, ~31.5 MB).

    .venv/bin/python benchmarks/tokenizer.py [--vocab-size 8192] [--repeats 3] [--pattern gpt4]

Both trainers get the same documents, vocabulary size, special tokens and split regex (HF gets
it as a `Split` pre-tokenizer before `ByteLevel`), and both may use every core (2 here). Encode
throughput is one core for everyone: tiktoken's `encode_ordinary` on the whole corpus, HF's
`encode` document by document, and our pure-Python reference on a 2 MB slice; then batch
encoding on every core, and the cost of tiktoken's regex split alone (a vocabulary in which
every piece is one token), which bounds what any tiktoken-built engine can reach here. Figures are
medians over --repeats runs; results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from lmstack.data.sources import iter_documents
from lmstack.tokenizer import DEFAULT_SPECIAL_TOKENS, train_bpe
from lmstack.tokenizer.patterns import resolve_pattern


def median_time(fn, repeats: int):
    """Run fn `repeats` times; return (median seconds, last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def train_hf(docs: list[str], vocab_size: int, pattern: str):
    """Hugging Face byte-level BPE with our split regex, trained on the same documents."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=list(DEFAULT_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(docs, trainer)
    return hf


def split_only(tok, docs: list[str]):
    """A tiktoken encoding whose vocabulary holds every piece of the corpus whole, so encoding
    costs only the regex split: the most the fast engine can reach on this text."""
    import tiktoken

    from lmstack.tokenizer.patterns import compile_pattern

    ranks = dict(tok.ranks)
    for doc in docs:
        for piece in compile_pattern(tok.pattern).findall(doc):
            ranks.setdefault(piece.encode(), len(ranks))
    return tiktoken.Encoding("split-only", pat_str=tok.pattern, mergeable_ranks=ranks,
                             special_tokens={})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pattern", default="gpt4")
    ap.add_argument("--reference-mb", type=float, default=2.0)
    args = ap.parse_args()
    pattern = resolve_pattern(args.pattern)
    cores = os.cpu_count() or 1

    docs = [d.text for d in iter_documents("stdlib")]
    text = "".join(docs)
    n_bytes = len(text.encode())
    print(f"corpus: {len(docs)} documents, {n_bytes / 1e6:.1f} MB; vocab {args.vocab_size}; "
          f"{cores} cores; {platform.processor() or platform.machine()}; "
          f"python {platform.python_version()}")

    t_ours, ours = median_time(lambda: train_bpe(docs, args.vocab_size, pattern=pattern,
                                                 workers=cores, progress=False), args.repeats)
    t_hf, hf = median_time(lambda: train_hf(docs, args.vocab_size, pattern), args.repeats)

    t_fast, ids = median_time(lambda: ours.encode_ordinary(text), args.repeats)
    t_hf_enc, hf_ids = median_time(lambda: [i for d in docs for i in hf.encode(d).ids],
                                   args.repeats)
    t_batch, _ = median_time(lambda: ours.encode_ordinary_batch(docs, num_threads=cores),
                             args.repeats)
    t_hf_batch, _ = median_time(lambda: hf.encode_batch(docs), args.repeats)
    whole_pieces = split_only(ours, docs)
    t_split, _ = median_time(lambda: whole_pieces.encode_ordinary(text), args.repeats)
    piece = text[: int(args.reference_mb * 1e6)]
    t_ref, ref_ids = median_time(lambda: ours.encode_ordinary(piece, engine="reference"), 1)
    identical = ref_ids == ours.encode_ordinary(piece)
    piece_mb = len(piece.encode()) / 1e6

    bpt_ours = n_bytes / len(ids)
    bpt_hf = n_bytes / len(hf_ids)
    rows = [
        ("train time (s)", f"{t_ours:.2f}", f"{t_hf:.2f}", f"{t_ours / t_hf:.2f}x HF"),
        ("bytes per token", f"{bpt_ours:.4f}", f"{bpt_hf:.4f}",
         f"{100 * (bpt_ours / bpt_hf - 1):+.2f}% vs HF"),
        ("encode MB/s, fast engine (1 core)", f"{n_bytes / 1e6 / t_fast:.2f}",
         f"{n_bytes / 1e6 / t_hf_enc:.2f}", f"{t_hf_enc / t_fast:.2f}x HF"),
        (f"encode MB/s, batch ({cores} threads)", f"{n_bytes / 1e6 / t_batch:.2f}",
         f"{n_bytes / 1e6 / t_hf_batch:.2f}", f"{t_hf_batch / t_batch:.2f}x HF"),
        ("tiktoken split alone MB/s (1 core)", f"{n_bytes / 1e6 / t_split:.2f}", "",
         "the ceiling of the fast engine"),
        ("encode MB/s, reference (1 core)", f"{piece_mb / t_ref:.3f}", "",
         f"identical ids to fast: {identical}"),
    ]
    print(f"\n| {'measure':<34} | {'lmstack':>9} | {'HF':>9} | ratio |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|-------|")
    for name, a, b, ratio in rows:
        print(f"| {name:<34} | {a:>9} | {b:>9} | {ratio} |")


if __name__ == "__main__":
    main()
