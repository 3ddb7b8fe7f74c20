"""The fast encoders behind `Tokenizer.encode`, and when tiktoken may be one of them.

A tokenizer merges by one of two rules (bpe.py): "id" (the pair whose concatenation has the
lowest id; tiktoken's rule, and that of every tokenizer lmstack trains) or "rank" (the pair
listed earliest in the merge list; Hugging Face's and llama.cpp's, for imported vocabularies).

tiktoken implements the id rule, so it encodes our own tokenizers. For a rank vocabulary it
gives the same ids exactly when, with each merged token ranked by its place in the merge list:

1. no token is made by two merges (tiktoken would rank both pairs alike);
2. every merged token is what the rank rule makes of its own bytes. Then no piece ever holds
   two adjacent tokens that join into a token by a pair the list does not name: the merges
   inside their span happen as they would in that token alone, which ends in the token, not
   in the unlisted pair. With no such pair, both rules choose the same merge at every step;
3. with `ignore_merges`, no token is outside the merges (tiktoken cannot hold one whole
   without also merging into it);
4. the last split step is one tiktoken can run: findall, or "isolated" with a regex known to
   match every character (patterns.py's), so findall finds the same pieces. Earlier steps and
   the normalizer run here in Python, and tiktoken encodes each piece they leave.

SmolLM2's vocabulary passes (the check takes ~0.5 s, once per tokenizer). Text holding a byte that has no
token goes to the Python engine, which drops the byte as `tokenizers` does. Otherwise — and for
vocabularies that fail the check — `PieceEngine` encodes: pre-tokenize with `regex`, then
look each piece up in a cache before merging it (text repeats its pieces, so few are merged).
"""

from __future__ import annotations

import re
from typing import Any

import tiktoken

from lmstack.tokenizer.patterns import COVERING_PATTERNS
from lmstack.tokenizer.pretokenize import Split

CACHE_LIMIT = 200_000  # pieces kept; the cache starts over when full


def repair(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD (tiktoken's rule)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class PieceEngine:
    """Pure Python: pre-tokenize, then BPE each piece through a cache."""

    name = "python"

    def __init__(self, tok: Any, why: str = "") -> None:
        self.tok, self.why, self.cache = tok, why, {}

    def encode(self, text: str) -> list[int]:
        """Ids of text (no special or added tokens in it)."""
        pre, cache, bpe = self.tok.pretokenizer, self.cache, self.tok.encode_piece
        out: list[int] = []
        for piece in pre.pieces(repair(text)):
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                ids = cache[piece] = bpe(piece.encode("utf-8"))
            out += ids
        return out

    def encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        """Ids of many texts (one thread: the GIL would serialize them anyway)."""
        return [self.encode(t) for t in texts]


class TiktokenEngine:
    """tiktoken on the last split step; earlier steps, normalizer and byte gaps in Python."""

    name = "tiktoken"
    why = ""

    def __init__(self, tok: Any, pat_str: str, table: dict[bytes, int], remap: list[int] | None):
        self.tok, self.remap = tok, remap
        self.enc = tiktoken.Encoding(name=f"lmstack-{tok.fingerprint}", pat_str=pat_str,
                                     mergeable_ranks=table, special_tokens={})
        self.head = tok.pretokenizer.steps[:-1]
        gaps = [b for b in range(256) if tok.byte_ids[b] is None]
        self.gaps = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in gaps) + b"]") \
            if gaps else None
        self.fallback = PieceEngine(tok, "text holding a byte that has no token")
        self.plain = not self.head and not tok.pretokenizer.normalizers and remap is None \
            and self.gaps is None

    def encode(self, text: str) -> list[int]:
        """Ids of text (no special or added tokens in it)."""
        pre = self.tok.pretokenizer
        text = pre.normalize(repair(text))
        if self.gaps is not None and self.gaps.search(text.encode("utf-8")):
            return self.fallback.encode(text)
        if self.head:
            ids = [i for seg in pre.split(text, self.head) for i in self.enc.encode_ordinary(seg)]
        else:
            ids = self.enc.encode_ordinary(text)
        return ids if self.remap is None else [self.remap[i] for i in ids]

    def encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        """Ids of many texts, in threads where tiktoken alone encodes them."""
        if self.plain:
            return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)
        return [self.encode(t) for t in texts]


def fast_engine(tok: Any) -> PieceEngine | TiktokenEngine:
    """tiktoken where it gives this tokenizer's ids exactly (module docstring), else Python."""
    plan = _tiktoken_plan(tok)
    if isinstance(plan, str):
        return PieceEngine(tok, plan)
    return TiktokenEngine(tok, *plan)


def _tiktoken_plan(tok: Any) -> str | tuple[str, dict[bytes, int], list[int] | None]:
    """(pattern, mergeable ranks, rank -> id table or None) for tiktoken, or why it cannot."""
    last = tok.pretokenizer.steps[-1] if tok.pretokenizer.steps else None
    if not isinstance(last, Split):
        return "the pre-tokenizer does not end with a split"
    if last.behavior == "removed" and last.invert:
        pat_str = last.regex
    elif last.behavior == "isolated" and last.regex in COVERING_PATTERNS:
        pat_str = last.regex  # matches every character: findall finds the isolated pieces
    else:
        return "its last split is not findall or a known pattern that matches every character"
    if tok.rule == "id":
        return pat_str, dict(tok.ranks), None
    return _rank_table(tok, pat_str)


def _rank_table(tok: Any, pat_str: str) -> str | tuple[str, dict[bytes, int], list[int] | None]:
    made: dict[int, int] = {}  # merged id -> its merge's place in the list
    for k, (_, _, new) in enumerate(tok.merges):
        if new in made:
            return f"two merges make token {new}"
        made[new] = k
    byte_set = {i for i in tok.byte_ids if i is not None}
    outside = [i for i in tok.vocab if i not in made and i not in byte_set]
    if outside and tok.ignore_merges:
        return f"{len(outside)} tokens are made by no merge and ignore_merges may emit them"
    for new in made:
        data = tok.vocab[new]
        if tok.merge_ids([tok.byte_ids[b] for b in data]) != [new]:
            return f"token {new} ({data!r}) is not what the merges make of its own bytes"
    order = [new for _, _, new in tok.merges]
    # Bytes never compete (a pair joins two or more bytes), so only merged ids need to rise
    # in merge order for the ids themselves to serve as tiktoken's ranks.
    if all(a < b for a, b in zip(order, order[1:])):
        return pat_str, {tok.vocab[i]: i for i in (*byte_set, *order)}, None
    ids = sorted(byte_set) + order  # rank = place in this list; mapped back to ids after
    return pat_str, {tok.vocab[i]: r for r, i in enumerate(ids)}, ids
