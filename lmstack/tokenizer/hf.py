"""The Hugging Face `tokenizer.json` format (byte-level BPE, GPT-2 style), both directions.

Hugging Face `tokenizers` stores byte-level BPE with every byte mapped to a printable character
(GPT-2's `bytes_to_unicode` table, so " hello" is stored as "Ġhello"), a vocabulary of those
strings, and a ranked merge list.

Export writes a file that `tokenizers.Tokenizer.from_file` loads and encodes to our ids: our
split pattern as a `Split` pre-tokenizer, byte-level mapping without its own regex, and
`ignore_merges` so a piece that is a whole token is looked up first, as tiktoken does. Our rule
is "merge the adjacent pair whose concatenation has the lowest id"; Hugging Face merges only
listed pairs by list position, so every way of splitting a token into two tokens is listed,
ordered by the token's id.

Import reads GPT-2-style files (a `ByteLevel` pre-tokenizer with its GPT-2 regex, or a `Split`
regex followed by `ByteLevel`), with no normalizer. Anything else is refused with an error that
names the field, never approximated silently.

This module only translates between that JSON and a tokenizer's parts (pattern, merges,
special tokens, byte ids); tokenizer.py builds the `Tokenizer` from them, so the two do not
import each other. `Tokenizer.load` reads either format; `save_hf` and `load_hf` are the
explicit ways, both exported by `lmstack.tokenizer`:

    python -c "from lmstack.tokenizer import Tokenizer, save_hf;
               save_hf(Tokenizer.load('tok.json'), 'hf/tokenizer.json')"
"""

from __future__ import annotations

import json
from functools import lru_cache

from lmstack.errors import TokenizerError
from lmstack.tokenizer.patterns import GPT2_PATTERN


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes map to themselves).

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    >>> len(set(table.values()))
    256
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:  # control bytes and space move up past 255, in byte order
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _to_str(data: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def _to_bytes(token: str, source: str) -> bytes:
    inverse = _unicode_to_bytes()
    try:
        return bytes(inverse[ch] for ch in token)
    except KeyError as e:
        raise TokenizerError(
            f"{source}: vocabulary entry {token!r} has character {e} outside the byte-level "
            "alphabet; only byte-level BPE tokenizers (GPT-2 style) can be imported"
        ) from None


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def is_hf_dict(d: dict) -> bool:
    """Whether a parsed `tokenizer.json` is Hugging Face's (it has a "model"), not ours."""
    return "model" in d and "format" not in d


def to_hf_dict(pattern: str, vocab: dict[int, bytes], special_tokens: dict[str, int]) -> dict:
    """The `tokenizer.json` content for a tokenizer's parts (see the module docstring)."""
    tokens = set(vocab.values())
    hf_vocab = {_to_str(b): i for i, b in sorted(vocab.items())}
    merges = []
    for token_id in sorted(vocab):
        data = vocab[token_id]
        for k in range(1, len(data)):
            if data[:k] in tokens and data[k:] in tokens:
                merges.append([_to_str(data[:k]), _to_str(data[k:])])
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s, i in sorted(special_tokens.items(), key=lambda kv: kv[1])
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": False},
            byte_level,
        ]},
        "post_processor": None,
        "decoder": {**byte_level, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": hf_vocab, "merges": merges},
    }


def _pattern_of(pre: dict | None, source: str) -> str:
    """The split regex of a byte-level pre-tokenizer, or an error naming what is unsupported."""
    def byte_level(step: dict, own_regex: bool) -> None:
        if step.get("add_prefix_space"):
            raise TokenizerError(
                f"{source}: pre_tokenizer ByteLevel has add_prefix_space=true, which lmstack "
                "does not support; set it to false (GPT-2's own file has it false)"
            )
        if step.get("use_regex", True) != own_regex:
            raise TokenizerError(f"{source}: unsupported ByteLevel use_regex setting")

    if pre is None:
        raise TokenizerError(f"{source}: no pre_tokenizer; a byte-level BPE needs ByteLevel")
    if pre.get("type") == "ByteLevel":
        byte_level(pre, own_regex=True)
        return GPT2_PATTERN
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and "Regex" in steps[0].get("pattern", {})
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")):
        byte_level(steps[1], own_regex=False)
        return steps[0]["pattern"]["Regex"]
    raise TokenizerError(
        f"{source}: pre_tokenizer {json.dumps(pre)[:200]} is not supported; lmstack imports "
        "ByteLevel, or Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]"
    )


def from_hf_dict(d: dict, source: str = "tokenizer.json") -> tuple[str, list, dict, list[int]]:
    """The parts of a Hugging Face byte-level BPE `tokenizer.json`, as `Tokenizer` takes them:
    (pattern, merges as (left id, right id, new id), special tokens, the 256 byte ids)."""
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(
            f"{source}: model type {model.get('type')!r} is not supported; only byte-level BPE"
        )
    if d.get("normalizer") is not None:
        raise TokenizerError(
            f"{source}: normalizer {d['normalizer'].get('type')!r} is not supported yet; "
            "only tokenizers without a normalizer (GPT-2 style) can be imported"
        )
    for flag in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(flag):
            raise TokenizerError(f"{source}: BPE option {flag}={model[flag]!r} is not supported")
    pattern = _pattern_of(d.get("pre_tokenizer"), source)
    vocab_str: dict[str, int] = model.get("vocab") or {}
    specials = {t["content"]: int(t["id"]) for t in d.get("added_tokens", [])}
    by_bytes = {_to_bytes(s, source): int(i) for s, i in vocab_str.items() if s not in specials}
    byte_ids = []
    for b in range(256):
        if bytes([b]) not in by_bytes:
            raise TokenizerError(
                f"{source}: the vocabulary lacks the byte {b:#04x}; not a byte-level BPE"
            )
        byte_ids.append(by_bytes[bytes([b])])
    made = {bytes([b]) for b in range(256)}
    merges, last_id = [], -1
    for k, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        lb, rb = _to_bytes(left, source), _to_bytes(right, source)
        new = lb + rb
        if lb not in by_bytes or rb not in by_bytes or new not in by_bytes:
            raise TokenizerError(f"{source}: merge {k} {merge!r} refers to a token not in vocab")
        if new in made or lb not in made or rb not in made:
            # Another split of a token: implied by the rank rule (a pair merges when its
            # concatenation is a token); the token is made by the split whose parts exist.
            continue
        if by_bytes[new] < last_id:
            raise TokenizerError(
                f"{source}: merge {k} makes id {by_bytes[new]} after id {last_id}; lmstack needs "
                "ids in merge order (true of GPT-2-style files)"
            )
        last_id = by_bytes[new]
        made.add(new)
        merges.append((by_bytes[lb], by_bytes[rb], by_bytes[new]))
    unreachable = len(by_bytes) - len(made)
    if unreachable:
        raise TokenizerError(
            f"{source}: {unreachable} vocabulary entries are neither bytes nor made by a merge"
        )
    return pattern, merges, specials, byte_ids

