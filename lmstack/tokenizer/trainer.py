"""Byte-level BPE training (Sennrich et al. 2016; byte-level as in GPT-2, Radford et al. 2019).

    python -m lmstack.cli tokenizer train --vocab-size 8192 --out tok.json   # stdlib corpus

1. Split every document into chunks with the pre-tokenization pattern, and count the unique
   chunks: the stdlib corpus has 7 M chunks but only ~120 k distinct ones, and merging runs on
   the distinct ones weighted by their counts. Counting runs in worker processes.
2. Start from the 256 byte tokens. Count every adjacent pair once, weighted by chunk frequency.
3. Repeat: take the most frequent pair from a max-heap, give it a new token id, and rewrite only
   the chunks that contain it (an index from pair to chunks says which), adjusting the pair
   counts of those chunks. There is no rescan of the corpus per merge — the rescan is what makes
   the textbook trainer 80-200x slower than Hugging Face `tokenizers`.

Heap entries go stale when a pair's count drops; a popped entry whose count is out of date is
pushed back with the current count (lazy deletion). Counts only rise for pairs that contain the
token just made, and those are pushed fresh after each merge, so the top of the heap is always
exact. Ties go to the smaller pair of ids, so training is deterministic.

Special tokens are cut out of the documents before splitting (they are never merged into) and
take the last ids of the vocabulary.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import signal
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

from lmstack.errors import ConfigError, DataError, TokenizerError
from lmstack.tokenizer.patterns import compile_pattern, resolve_pattern
from lmstack.tokenizer.special import DEFAULT_SPECIAL_TOKENS, special_splitter
from lmstack.tokenizer.tokenizer import Tokenizer, text_to_bytes

_BATCH_CHARS = 2_000_000  # text per worker task: large enough that pickling is noise


def _count_chunks(args: tuple[list[str], str, tuple[str, ...]]) -> Counter:
    """Count the pre-tokenization chunks of a batch of documents (runs in a worker)."""
    docs, pattern, specials = args
    rx = compile_pattern(pattern)
    cut = special_splitter(specials)
    counts: Counter = Counter()
    for doc in docs:
        for part in cut(doc) if specials else (doc,):
            counts.update(rx.findall(part))
    return counts


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops them: else each prints a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in documents:
        if not isinstance(doc, str):
            raise DataError(f"documents must be str, got {type(doc).__name__}; decode bytes first")
        batch.append(doc)
        size += len(doc)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_chunks(
    documents: Iterable[str],
    pattern: str,
    special_tokens: tuple[str, ...] = (),
    workers: int | None = None,
    progress: bool = True,
) -> Counter:
    """Count unique pre-tokenization chunks over documents, in parallel worker processes.

    >>> sorted(count_chunks(["a b a", "b"], r"\\S+|\\s+", progress=False, workers=1).items())
    [(' ', 2), ('a', 2), ('b', 2)]
    """
    workers = workers or os.cpu_count() or 1
    total: Counter = Counter()
    bar = tqdm(desc="count chunks", unit="MB", disable=not progress, leave=False)
    jobs = ((batch, pattern, special_tokens) for batch in _batches(documents))
    if workers == 1:
        results: Iterable[Counter] = map(_count_chunks, jobs)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=_ignore_sigint)
        results = pool.imap_unordered(_count_chunks, jobs)
    try:
        for counts in results:
            total.update(counts)
            bar.update(sum(len(c) * n for c, n in counts.items()) / 1e6)
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
    return total


def _merge_word(
    word: list[int], a: int, b: int, new: int, f: int, pair_counts: dict[tuple[int, int], int]
) -> tuple[list[int], list[tuple[int, int]]] | None:
    """Replace each (a, b) in word by `new`, left to right, and update pair counts locally.

    Only the pairs next to a merge change: (left, a) and (b, right) lose `f`, (left, new) and
    (new, right) gain it. Returns the new word and the pairs it gained, or None if no (a, b).

    >>> counts = {(1, 2): 1, (2, 1): 1, (2, 3): 1}
    >>> _merge_word([1, 2, 1, 2, 3], 1, 2, 9, 1, counts)
    ([9, 9, 3], [(9, 9), (9, 3)])
    >>> {p: c for p, c in counts.items() if c}
    {(1, 2): 1, (9, 9): 1, (9, 3): 1}
    """
    n = len(word)
    out: list[int] = []
    made: list[int] = []  # positions in `out` of the tokens this merge created
    i = 0
    while True:
        try:
            j = word.index(a, i)
        except ValueError:
            break
        if j + 1 >= n:
            break
        if word[j + 1] != b:
            out.extend(word[i : j + 1])
            i = j + 1
            continue
        out.extend(word[i:j])
        if j > 0:
            pair_counts[(word[j - 1], a)] -= f
        # (b, right) is also the next merge's (left, a) when they touch: subtract it once.
        if j + 2 < n and not (word[j + 2] == a and j + 3 < n and word[j + 3] == b):
            pair_counts[(b, word[j + 2])] -= f
        made.append(len(out))
        out.append(new)
        i = j + 2
    if not made:
        return None
    out.extend(word[i:])
    gained: list[tuple[int, int]] = []
    last = len(out) - 1
    for k, pos in enumerate(made):
        if pos > 0:
            gained.append((out[pos - 1], new))
        if pos < last and not (k + 1 < len(made) and made[k + 1] == pos + 1):
            gained.append((new, out[pos + 1]))
    for p in gained:
        pair_counts[p] = pair_counts.get(p, 0) + f
    return out, gained


def merge_loop(
    words: list[list[int]],
    freqs: list[int],
    vocab: dict[int, bytes],
    num_merges: int,
    min_frequency: int = 2,
    progress: bool = True,
) -> list[tuple[int, int, int]]:
    """Learn up to `num_merges` new tokens; returns (left, right, new id) merges in order.

    `words` are chunks as token-id lists and are rewritten in place; `vocab` (id -> bytes) is
    extended with every new token. A pair whose bytes already form a token (reached by another
    pair earlier) is merged into that token and does not use up a new id.

    >>> vocab = {i: bytes([i]) for i in range(256)}
    >>> words = [list(b"abab"), list(b"abc")]
    >>> merge_loop(words, [3, 1], vocab, num_merges=2)
    [(97, 98, 256), (256, 256, 257)]
    >>> words
    [[257], [256, 99]]
    """
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, word in enumerate(words):
        f = freqs[wi]
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    by_bytes = {b: i for i, b in vocab.items()}
    next_id = max(vocab) + 1
    merges: list[tuple[int, int, int]] = []
    bar = tqdm(total=num_merges, desc="merges", disable=not progress, leave=False)
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg:  # stale entry: requeue with the current count
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        a, b = pair
        merged = vocab[a] + vocab[b]
        new = by_bytes.get(merged)
        if new is None:
            new = next_id
            next_id += 1
            vocab[new] = merged
            by_bytes[merged] = new
            merges.append((a, b, new))
            bar.update(1)
        fresh: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            out = _merge_word(words[wi], a, b, new, freqs[wi], pair_counts)
            if out is None:  # the index is lazy: this chunk lost the pair to an earlier merge
                continue
            words[wi], made = out
            for p in made:
                where[p].add(wi)
            fresh.update(made)
        del pair_counts[pair]
        for p in fresh:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    return merges


def _counted(documents: Iterable[str], text: dict[str, int]) -> Iterator[str]:
    """The documents, adding their length to text["chars"] as they pass."""
    for doc in documents:
        text["chars"] += len(doc) if isinstance(doc, str) else 0
        yield doc


def train_bpe(
    documents: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    workers: int | None = None,
    progress: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `vocab_size` ids (bytes + merges + specials).

    >>> tok = train_bpe(["the cat sat on the mat"] * 3, vocab_size=262, progress=False)
    >>> tok.decode(tok.encode("the cat")) == "the cat"
    True
    """
    pattern = resolve_pattern(pattern)
    specials = tuple(dict.fromkeys(special_tokens))
    if vocab_size < 256 + len(specials):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
            f"{len(specials)} special tokens; use vocab_size >= {256 + len(specials) + 1}"
        )
    text = {"chars": 0}
    chunks = count_chunks(_counted(documents, text), pattern, specials, workers, progress)
    chunks.pop("", None)  # a pattern that can match empty text finds "" everywhere: no bytes
    if not chunks:
        if text["chars"]:
            raise TokenizerError(
                f"the split pattern {pattern!r} matches nothing in {text['chars']:,} characters of "
                "text; use 'gpt4', 'gpt2' or a regex that matches the text (e.g. '\\S+|\\s+')")
        raise DataError("cannot train a tokenizer on an empty corpus: the documents hold no text")
    words = [list(text_to_bytes(c)) for c in chunks]
    freqs = list(chunks.values())
    vocab = {i: bytes([i]) for i in range(256)}
    merges = merge_loop(
        words, freqs, vocab, vocab_size - 256 - len(specials), min_frequency, progress
    )
    first_special = 256 + len(merges)
    if first_special + len(specials) < vocab_size:
        warnings.warn(
            f"the corpus is too small for vocab_size {vocab_size}: no pair of tokens is left that "
            f"occurs {min_frequency} times or more after {len(merges):,} merges, so the tokenizer "
            f"has {first_special + len(specials):,} ids; train on more text or ask for fewer ids",
            stacklevel=2)
    return Tokenizer(
        pattern=pattern,
        merges=merges,
        special_tokens={s: first_special + k for k, s in enumerate(specials)},
    )

