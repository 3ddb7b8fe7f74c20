"""The Hugging Face `tokenizer.json` format (byte-level BPE), both directions.

Hugging Face `tokenizers` stores byte-level BPE with every byte mapped to a printable character
(GPT-2's `bytes_to_unicode` table, so " hello" is stored as "Ġhello"), a vocabulary of those
strings, and a ranked merge list.

Import reads what real byte-level checkpoints use (GPT-2, SmolLM2, Qwen2, Llama 3) and keeps
their rule: pairs merge by their place in the merge list ("rank", bpe.py), `ignore_merges`
looks a whole piece up first (Llama 3), a byte the vocabulary lacks is dropped (SmolLM2 lacks
21). Read: a `normalizer` of NFC/NFD/NFKC/NFKD or a `Sequence` of them (Qwen2: NFC); a
`pre_tokenizer` of `ByteLevel` (with `add_prefix_space`, `use_regex`), `Split` (Regex or
String; behavior Isolated or Removed; `invert`) and `Digits`, alone or in a `Sequence` ending
in `ByteLevel`; added tokens, special or not (not lstrip/rstrip/single_word); a
`post_processor` of `ByteLevel` and/or a `TemplateProcessing` that puts one token before
and/or after the text (Llama 3's bos); a `ByteLevel` decoder. Anything else is refused with an
error naming the field and its value, never approximated.

Export writes a file that `tokenizers.Tokenizer.from_file` encodes to our ids. An imported
vocabulary goes back as it came. One we trained (the id rule: "merge the pair whose
concatenation has the lowest id") is written with `ignore_merges` and every way of splitting
each token into two tokens listed as a merge, ordered by the token's id, so that Hugging Face's
rule picks the pairs ours does.

This module only translates between that JSON and a tokenizer's parts; tokenizer.py builds the
`Tokenizer`, so the two do not import each other:

    python -c "from lmstack.tokenizer import Tokenizer, save_hf;
               save_hf(Tokenizer.load('tok.json'), 'hf/tokenizer.json')"
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import regex

from lmstack.errors import TokenizerError
from lmstack.tokenizer.patterns import GPT2_PATTERN
from lmstack.tokenizer.pretokenize import NORMALIZERS, PrefixSpace, Pretokenizer, Split, Step


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


def to_str(data: bytes) -> str:
    """Bytes in the byte-level alphabet ("Ġhello" for b" hello")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def to_bytes(token: str, source: str) -> bytes:
    """The bytes a byte-level vocabulary entry stands for; an error naming it if it is not one."""
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


# ---- import ------------------------------------------------------------------------------
def from_hf_dict(d: dict, source: str = "tokenizer.json") -> dict[str, Any]:
    """The keyword arguments of `Tokenizer` for a Hugging Face byte-level BPE `tokenizer.json`."""
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        hint = ("; a WordPiece (BERT) tokenizer loads with "
                "lmstack.tokenizer.WordPieceTokenizer.load" if model.get("type") == "WordPiece"
                else "")
        raise TokenizerError(
            f"{source}: model type {model.get('type')!r} is not supported; only byte-level BPE"
            + hint
        )
    specials, added = _added_tokens(d.get("added_tokens") or [], d.get("normalizer"), source)
    pretokenizer = Pretokenizer(_normalizers(d.get("normalizer"), source),
                                _pre_steps(d.get("pre_tokenizer"), source))
    roles, add_bos, add_eos = _post_processor(d.get("post_processor"), source)
    _check_decoder(d.get("decoder"), source)
    vocab, merges, ignore_merges = _model(model, {*specials.values(), *added.values()}, source)
    splits = [s for s in pretokenizer.steps if isinstance(s, Split)]
    return dict(pattern=splits[-1].regex if splits else GPT2_PATTERN, merges=merges,
                special_tokens=specials, rule="rank", vocab=vocab, ignore_merges=ignore_merges,
                pretokenizer=pretokenizer, added_tokens=added, roles=roles, add_bos=add_bos,
                add_eos=add_eos)


def _model(model: dict, added_ids: set[int], source: str) -> tuple[dict, list, bool]:
    """(id -> bytes, merges as (left, right, new) ids in list order, ignore_merges)."""
    for flag in ("continuing_subword_prefix", "end_of_word_suffix", "dropout", "byte_fallback"):
        if model.get(flag):
            raise TokenizerError(f"{source}: BPE option {flag}={model[flag]!r} is not supported "
                                 "(byte-level BPE does not use it)")
    by_str = {s: int(i) for s, i in (model.get("vocab") or {}).items() if int(i) not in added_ids}
    vocab = {i: to_bytes(s, source) for s, i in by_str.items()}
    if model.get("unk_token") is not None and len({b for b in vocab.values() if len(b) == 1}) < 256:
        raise TokenizerError(f"{source}: model.unk_token={model['unk_token']!r} with bytes missing "
                             "from the vocabulary is not supported; set unk_token to null")
    merges = []
    for k, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ids = [by_str.get(left), by_str.get(right), by_str.get(left + right)]
        if None in ids:
            raise TokenizerError(f"{source}: merge {k} {merge!r} refers to a token not in vocab")
        merges.append(tuple(ids))
    return vocab, merges, bool(model.get("ignore_merges", False))


def _added_tokens(tokens: list[dict], normalizer: dict | None,
                  source: str) -> tuple[dict[str, int], dict[str, int]]:
    """(special tokens, added tokens that are not special), by content."""
    specials, added = {}, {}
    for t in tokens:
        for flag in ("lstrip", "rstrip", "single_word"):
            if t.get(flag):
                raise TokenizerError(f"{source}: added token {t['content']!r} has {flag}=true, "
                                     "which lmstack does not support")
        if t.get("normalized") and not t.get("special") and normalizer is not None:
            raise TokenizerError(f"{source}: added token {t['content']!r} is matched after the "
                                 "normalizer (normalized=true), which lmstack does not support")
        (specials if t.get("special") else added)[t["content"]] = int(t["id"])
    return specials, added


def _normalizers(n: dict | None, source: str) -> tuple[str, ...]:
    if n is None:
        return ()
    if n.get("type") == "Sequence":
        return tuple(f for part in n.get("normalizers", []) for f in _normalizers(part, source))
    if n.get("type") in NORMALIZERS:
        return (n["type"],)
    raise TokenizerError(f"{source}: normalizer {n.get('type')!r} is not supported; lmstack "
                         f"imports {', '.join(NORMALIZERS)} and Sequences of them")


def _pre_steps(pre: dict | None, source: str) -> tuple[Step, ...]:
    """Our split steps for a pre_tokenizer that ends in ByteLevel."""
    if pre is None:
        raise TokenizerError(f"{source}: no pre_tokenizer; a byte-level BPE needs ByteLevel")
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if "ByteLevel" not in kinds or kinds.index("ByteLevel") != len(kinds) - 1:
        raise TokenizerError(f"{source}: pre_tokenizer {json.dumps(pre)[:200]} does not end with "
                             "its one ByteLevel; lmstack imports byte-level BPE only")
    steps: list[Step] = []
    for p in parts:
        steps.extend(_pre_step(p, source))
    return tuple(steps)


def _pre_step(p: dict, source: str) -> list[Step]:
    kind = p.get("type")
    if kind == "ByteLevel":  # trim_offsets changes offsets only, never ids
        steps: list[Step] = [PrefixSpace()] if p.get("add_prefix_space") else []
        return steps + ([Split(GPT2_PATTERN)] if p.get("use_regex", True) else [])
    if kind == "Digits":
        return [Split(r"\p{N}" if p.get("individual_digits") else r"\p{N}+")]
    if kind == "Split":
        pattern = p.get("pattern") or {}
        rx = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern.get("String", ""))
        behavior = str(p.get("behavior", "")).lower()
        if behavior not in ("isolated", "removed") or not rx:
            raise TokenizerError(f"{source}: Split with behavior {p.get('behavior')!r} is not "
                                 "supported; lmstack imports Isolated and Removed")
        return [Split(rx, behavior, bool(p.get("invert")))]
    raise TokenizerError(f"{source}: pre-tokenizer {kind!r} is not supported; lmstack imports "
                         "ByteLevel, Split and Digits (alone or in a Sequence)")


def _post_processor(post: dict | None, source: str) -> tuple[dict[str, int], bool, bool]:
    """(roles, add_bos, add_eos) from a TemplateProcessing around one sequence."""
    parts = post.get("processors", []) if post and post.get("type") == "Sequence" else [post]
    roles, add_bos, add_eos = {}, False, False
    for p in parts:
        if p is None or p.get("type") == "ByteLevel":  # ByteLevel only trims offsets here
            continue
        if p.get("type") != "TemplateProcessing":
            raise TokenizerError(f"{source}: post_processor {p.get('type')!r} is not supported; "
                                 "lmstack imports ByteLevel and TemplateProcessing")
        names = [item.get("SpecialToken", {}).get("id", "?") if "Sequence" not in item else "A"
                 for item in p.get("single") or []]
        at = names.index("A") if names.count("A") == 1 else -1
        if at < 0 or at > 1 or len(names) - at > 2:
            raise TokenizerError(f"{source}: post_processor template {names} is not supported; "
                                 "lmstack imports one optional token before and after the text")
        for name, role in [(n, "bos") for n in names[:at]] + [(n, "eos") for n in names[at + 1:]]:
            ids = (p.get("special_tokens") or {}).get(name, {}).get("ids") or []
            if len(ids) != 1:
                raise TokenizerError(f"{source}: template token {name!r} has ids {ids}; "
                                     "lmstack needs exactly one")
            roles[role] = int(ids[0])
        add_bos, add_eos = add_bos or at == 1, add_eos or len(names) - at == 2
    return roles, add_bos, add_eos


def _check_decoder(dec: dict | None, source: str) -> None:
    if dec is not None and dec.get("type") != "ByteLevel":
        raise TokenizerError(f"{source}: decoder {dec.get('type')!r} is not supported; a "
                             "byte-level BPE decodes with ByteLevel")


# ---- export ------------------------------------------------------------------------------
def to_hf_dict(tok: Any) -> dict:
    """The `tokenizer.json` content for a Tokenizer (see the module docstring)."""
    hf_vocab = {to_str(b): i for i, b in sorted(tok.vocab.items())}
    if tok.rule == "id":
        merges, ignore_merges = _all_splits(tok.vocab), True
    else:
        merges = [[to_str(tok.vocab[a]), to_str(tok.vocab[b])] for a, b, _ in tok.merges]
        ignore_merges = tok.ignore_merges
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": special}
        for special, table in ((True, tok.special_tokens), (False, tok.added_tokens))
        for s, i in table.items()
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": sorted(added, key=lambda t: t["id"]),
        "normalizer": _normalizer_json(tok.pretokenizer.normalizers),
        "pre_tokenizer": _pre_json(tok.pretokenizer.steps),
        "post_processor": _template_json(tok),
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": hf_vocab, "merges": merges},
    }


def _all_splits(vocab: dict[int, bytes]) -> list[list[str]]:
    """Every split of every token into two tokens, by token id: HF then merges as the id rule."""
    tokens = set(vocab.values())
    merges = []
    for token_id in sorted(vocab):
        data = vocab[token_id]
        for k in range(1, len(data)):
            if data[:k] in tokens and data[k:] in tokens:
                merges.append([to_str(data[:k]), to_str(data[k:])])
    return merges


def _normalizer_json(forms: tuple[str, ...]) -> dict | None:
    if not forms:
        return None
    if len(forms) == 1:
        return {"type": forms[0]}
    return {"type": "Sequence", "normalizers": [{"type": f} for f in forms]}


def _pre_json(steps: tuple[Step, ...]) -> dict:
    """Split steps, then a ByteLevel that adds the prefix space and GPT-2 regex, if ours end so."""
    steps, prefix, own_regex = list(steps), False, False
    if steps and steps[-1] == Split(GPT2_PATTERN) and len(steps) > 1 and \
            isinstance(steps[-2], PrefixSpace):
        steps, prefix, own_regex = steps[:-2], True, True
    elif steps and isinstance(steps[-1], PrefixSpace):
        steps, prefix = steps[:-1], True
    out = []
    for s in steps:
        if isinstance(s, PrefixSpace):
            raise TokenizerError("a prefix space before other split steps has no tokenizer.json "
                                 "form (ByteLevel adds it last)")
        out.append({"type": "Split", "pattern": {"Regex": s.regex},
                    "behavior": s.behavior.capitalize(), "invert": s.invert})
    out.append({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True,
                "use_regex": own_regex})
    return {"type": "Sequence", "pretokenizers": out}


def _template_json(tok: Any) -> dict | None:
    if not (tok.add_bos or tok.add_eos):
        return None
    names = {i: s for s, i in {**tok.added_tokens, **tok.special_tokens}.items()}
    around = ([tok.roles["bos"]] if tok.add_bos else [], [tok.roles["eos"]] if tok.add_eos else [])
    single = [{"SpecialToken": {"id": names[i], "type_id": 0}} for i in around[0]] + \
        [{"Sequence": {"id": "A", "type_id": 0}}] + \
        [{"SpecialToken": {"id": names[i], "type_id": 0}} for i in around[1]]
    return {"type": "TemplateProcessing", "single": single,
            "pair": single + [{"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {names[i]: {"id": names[i], "ids": [i], "tokens": [names[i]]}
                               for i in (*around[0], *around[1])}}
