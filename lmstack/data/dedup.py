"""Exact and near-duplicate document removal: content hashing, MinHash and LSH banding.

Duplicated training text wastes compute and is memorized (Lee et al. 2022, "Deduplicating
Training Data Makes Language Models Better"). Two passes, both streaming and keep-first:

* **exact**: a 128-bit BLAKE2b digest of the text after case folding and whitespace
  collapsing; a document whose digest was seen before is dropped.
* **near**: Broder's MinHash (Broder 1997, "On the resemblance and containment of
  documents"). A document is its set of *shingles* (``shingle_size`` consecutive words);
  ``num_perm`` universal hash functions ``h(x) = (a*x + b) mod p`` (Carter & Wegman 1979)
  stand in for random permutations, and the signature is the minimum of each over the set.
  Two signatures agree in one position with probability equal to the Jaccard similarity of
  the sets. LSH banding (Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3.4)
  cuts the signature into ``bands`` bands of ``rows`` rows; documents sharing any whole band
  are candidates, which happens with probability ``1 - (1 - s**rows)**bands``. A candidate
  whose estimated Jaccard is at least ``threshold`` is a near-duplicate.

All hashing is vectorized numpy on the UTF-8 bytes: no Python loop per word or shingle.

Run it: ``python -m lmstack.data.dedup FILE_A FILE_B`` prints true and estimated Jaccard.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np
import regex

from lmstack.errors import ConfigError

MERSENNE_31 = (1 << 31) - 1  # p: a*x + b < 2**62 for a, b, x < p, so uint64 math is exact.
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_WHITESPACE = regex.compile(r"\s+")
# A "word" byte: ASCII letter, digit or underscore, or any byte of a multi-byte UTF-8 letter.
_WORD_BYTE = np.array([chr(i).isalnum() or chr(i) == "_" or i >= 128 for i in range(256)])


def dedup_text(text: str) -> str:
    """The form of `text` compared by exact dedup: case-folded, whitespace runs made one space.

    >>> dedup_text("  Hello\\n\\tWORLD ")
    'hello world'
    """
    return _WHITESPACE.sub(" ", text.casefold()).strip()


def exact_key(text: str) -> bytes:
    """A 16-byte digest identifying `text` up to case and whitespace.

    >>> exact_key("a  b") == exact_key("A\\nB"), exact_key("ab") == exact_key("a b")
    (True, False)
    """
    return hashlib.blake2b(dedup_text(text).encode("utf-8"), digest_size=16).digest()


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|, with two empty sets counting as identical.

    >>> jaccard({1, 2, 3}, {2, 3, 4})
    0.5
    """
    return len(a & b) / len(a | b) if a or b else 1.0


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: spreads every input bit over all 64 output bits (wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(text: str) -> np.ndarray:
    """A uint64 hash per word (run of letters/digits/underscore), case-insensitive, in order.

    >>> h = word_hashes("Foo bar, foo!")
    >>> len(h), bool(h[0] == h[2]), bool(h[0] == h[1])
    (3, True, False)
    """
    b = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    is_word = _WORD_BYTE[b]
    idx = np.flatnonzero(is_word)
    if idx.size == 0:
        return np.zeros(0, dtype=np.uint64)
    # A word starts at a word byte whose predecessor is not one; number the words 0, 1, ...
    is_start = is_word.copy()
    is_start[1:] &= ~is_word[:-1]
    starts = np.flatnonzero(is_start)
    word_of = np.cumsum(is_start)[idx] - 1
    pos = idx - starts[word_of]
    # Polynomial hash sum((byte_i + 1) * B**i) mod 2**64 of each word, summed per segment.
    with np.errstate(over="ignore"):
        terms = (b[idx].astype(np.uint64) + np.uint64(1)) * _powers(int(pos.max()) + 1)[pos]
        sums = np.add.reduceat(terms, np.flatnonzero(is_start[idx]))
        return _mix64(sums)


_POWERS = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
    """B**i mod 2**64 for i < n, from a table grown on demand (words are rarely long)."""
    global _POWERS
    if _POWERS.size < n:
        size = max(n, 2 * _POWERS.size, 256)
        with np.errstate(over="ignore"):
            _POWERS = np.cumprod(np.full(size, 0x100000001B3, dtype=np.uint64)) // np.uint64(0x100000001B3)
    return _POWERS


def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """The set of k-word shingles of `text` as sorted unique hashes below the prime p.

    A text of fewer than k words is one shingle; a text without words has none.

    >>> len(shingle_hashes("a b c d", k=2)), len(shingle_hashes("a b a b", k=2))
    (3, 2)
    >>> len(shingle_hashes("a b", k=5)), len(shingle_hashes("!!", k=5))
    (1, 0)
    """
    words = word_hashes(text)
    if words.size == 0:
        return np.zeros(0, dtype=np.uint64)
    k = min(k, words.size)
    n = words.size - k + 1
    with np.errstate(over="ignore"):
        h = words[:n].copy()
        for j in range(1, k):  # Order matters: "a b" and "b a" are different shingles.
            h = h * np.uint64(0x9E3779B97F4A7C15) + words[j : j + n]
        h = _mix64(h)
    return _sorted_unique(h % np.uint64(MERSENNE_31))


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique for a 1-D array, via one sort (np.unique's hashing path is slower here)."""
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if x.size else x


class MinHasher:
    """`num_perm` hash functions (a*x + b) mod p drawn from a seeded generator."""

    def __init__(self, num_perm: int = 128, seed: int = 0, chunk: int = 1024):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, MERSENNE_31, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, MERSENNE_31, size=(num_perm, 1), dtype=np.uint64)
        self.chunk = chunk  # Shingles per step: bounds the (num_perm x chunk) temporary.

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """The MinHash signature (num_perm uint32 minima) of a set of hashes below p.

        The empty set gets all-p, so empty documents match each other and nothing else.

        >>> mh = MinHasher(num_perm=8)
        >>> a, b = np.array([5, 9], dtype=np.uint64), np.array([9, 5], dtype=np.uint64)
        >>> bool((mh.signature(a) == mh.signature(b)).all())
        True
        """
        p = np.uint64(MERSENNE_31)
        sig = np.full(self.num_perm, p, dtype=np.uint64)
        x = np.asarray(hashes, dtype=np.uint64) % p
        for i in range(0, x.size, self.chunk):
            y = self.a * x[None, i : i + self.chunk]
            y += self.b
            y %= p
            np.minimum(sig, y.min(axis=1), out=sig)
        return sig.astype(np.uint32)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of positions where two MinHash signatures agree.

    >>> estimate_jaccard(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0]))
    0.5
    """
    return float(np.mean(sig_a == sig_b))


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """Chance that two sets of Jaccard `s` share at least one of `bands` bands of `rows` rows.

    >>> round(candidate_probability(0.8, bands=20, rows=5), 4)  # MMDS example 3.11
    0.9996
    >>> candidate_probability(0.0, 16, 8), candidate_probability(1.0, 16, 8)
    (0.0, 1.0)
    """
    return 1.0 - (1.0 - s**rows) ** bands


class LSHIndex:
    """Banded LSH buckets: band number -> band contents (bytes) -> keys of documents in it."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self.tables: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]

    def _band_keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def candidates(self, sig: np.ndarray) -> set[int]:
        """Keys of stored documents that share at least one whole band with `sig`."""
        found: set[int] = set()
        for table, key in zip(self.tables, self._band_keys(sig)):
            found.update(table.get(key, ()))
        return found

    def insert(self, key: int, sig: np.ndarray) -> None:
        """Store document `key` under each of its bands."""
        for table, band in zip(self.tables, self._band_keys(sig)):
            table.setdefault(band, []).append(key)


@dataclass
class DedupConfig:
    """Which dedup passes run and the MinHash/LSH parameters of the near-duplicate pass.

    With 128 permutations in 16 bands of 8 rows the LSH S-curve crosses 1/2 near Jaccard
    (1/16)**(1/8) ~= 0.71, so pairs at the 0.8 threshold become candidates ~95% of the time.
    """

    exact: bool = True
    near: bool = True
    num_perm: int = 128
    bands: int = 16
    shingle_size: int = 5
    threshold: float = 0.8
    seed: int = 0

    def rows(self) -> int:
        """Rows per band, after checking the parameters fit together."""
        if self.num_perm <= 0 or self.bands <= 0 or self.num_perm % self.bands:
            raise ConfigError(
                f"num_perm={self.num_perm} cannot be cut into bands={self.bands} equal bands; "
                "choose num_perm as a positive multiple of bands (e.g. 128 and 16)"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup threshold {self.threshold} is not a Jaccard similarity; use a value in (0, 1]")
        if self.shingle_size < 1:
            raise ConfigError(f"shingle_size={self.shingle_size} must be at least 1 word")
        return self.num_perm // self.bands


class ExactDeduper:
    """Remembers the digests of the documents it has kept."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def is_duplicate(self, text: str) -> bool:
        """True if an equal text (up to case/whitespace) was seen; otherwise remember this one."""
        key = exact_key(text)
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


class NearDeduper:
    """Streaming MinHash-LSH near-duplicate detector that keeps the first of each cluster.

    >>> nd = NearDeduper(DedupConfig(num_perm=64, bands=16, shingle_size=2))
    >>> base = " ".join(f"w{i}" for i in range(200))
    >>> nd.is_duplicate(base), nd.is_duplicate(base + " one more"), nd.is_duplicate("something else entirely")
    (False, True, False)
    """

    def __init__(self, cfg: DedupConfig | None = None):
        self.cfg = cfg or DedupConfig()
        self.hasher = MinHasher(self.cfg.num_perm, self.cfg.seed)
        self.index = LSHIndex(self.cfg.bands, self.cfg.rows())
        self.signatures: list[np.ndarray] = []

    def is_duplicate(self, text: str) -> bool:
        """True if `text` is a near-duplicate of a kept document; otherwise keep (index) it."""
        sig = self.hasher.signature(shingle_hashes(text, self.cfg.shingle_size))
        for key in self.index.candidates(sig):
            if estimate_jaccard(sig, self.signatures[key]) >= self.cfg.threshold:
                return True
        self.index.insert(len(self.signatures), sig)
        self.signatures.append(sig)
        return False


def main(argv: list[str] | None = None) -> None:
    """Print the true and the MinHash-estimated Jaccard similarity of two files' shingle sets."""
    a_path, b_path = argv if argv is not None else sys.argv[1:3]
    with open(a_path, encoding="utf-8") as fa, open(b_path, encoding="utf-8") as fb:
        a, b = shingle_hashes(fa.read()), shingle_hashes(fb.read())
    mh = MinHasher()
    print(f"true Jaccard {jaccard(set(a.tolist()), set(b.tolist())):.3f}")
    print(f"MinHash estimate ({mh.num_perm} perms) {estimate_jaccard(mh.signature(a), mh.signature(b)):.3f}")


if __name__ == "__main__":
    main()
