"""WordPiece vocabularies on disk: BERT's `vocab.txt`, `tokenizer_config.json`, and a Hugging
Face WordPiece `tokenizer.json`.

- `vocab.txt`: one token per line, the id is the line number (from 0), trailing whitespace
  dropped, as `tokenizers` reads it (a token listed twice keeps its last line).
- `tokenizer_config.json` (transformers): `do_lower_case`, `strip_accents`,
  `tokenize_chinese_chars`, the special tokens' names and `model_max_length`.
- `tokenizer.json` (`tokenizers`): `model` of type `WordPiece` (vocab, `unk_token`,
  `continuing_subword_prefix`, `max_input_chars_per_word`); `normalizer` `BertNormalizer` or
  null; `pre_tokenizer` `BertPreTokenizer`; `post_processor` `BertProcessing`,
  `TemplateProcessing` or null; `decoder` `WordPiece` or null; `added_tokens`. Its
  `truncation` and `padding` fields are ignored: the caller asks for those in `encode`.
  Anything else is refused with an error naming the field and its value, never approximated.

This module only turns files into the parts of a tokenizer; wordpiece.py builds it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmstack.errors import TokenizerError
from lmstack.tokenizer.bert_pretokenize import WHITESPACE
from lmstack.tokenizer.wordpiece_encoding import Template

# transformers writes this (int(1e30)) as model_max_length when a model has no limit.
NO_LIMIT = 10**18
TOKEN_NAMES = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")


@dataclass(frozen=True)
class AddedToken:
    """A token matched whole in the text before WordPiece runs (the specials, say)."""

    content: str
    id: int
    special: bool = True
    normalized: bool = False  # matched in the normalized text rather than the raw text


def read_vocab_txt(path: str | os.PathLike) -> dict[str, int]:
    """token -> id from a `vocab.txt`: one token a line, the id is the line number."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise TokenizerError(f"{path}: no such vocabulary file; pass a vocab.txt, a "
                             "tokenizer.json or a directory holding one") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e}); a vocab.txt is UTF-8") from None
    lines = text.split("\n")  # not splitlines(): U+2028, U+0085, \x1c... are not line breaks
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise TokenizerError(f"{path}: the vocabulary is empty; a vocab.txt lists one token a line")
    strip = "".join(WHITESPACE)
    return {line.rstrip(strip): i for i, line in enumerate(lines)}


def read_tokenizer_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `WordPieceConfig` fields a transformers `tokenizer_config.json` sets."""
    d = _read_json(Path(path))
    out: dict[str, Any] = {}
    for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        if key in d:
            out[key] = d[key]
    for key in TOKEN_NAMES:
        value = d.get(key)
        if isinstance(value, dict):  # an AddedToken written out in full
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    limit = d.get("model_max_length")
    if isinstance(limit, int) and 0 < limit < NO_LIMIT:
        out["model_max_length"] = limit
    return out


def read_tokenizer_json(path: str | os.PathLike) -> dict[str, Any]:
    """The parts of a WordPiece tokenizer from a Hugging Face `tokenizer.json`."""
    return parse_tokenizer_json(_read_json(Path(path)), str(path))


def parse_tokenizer_json(d: dict, source: str = "tokenizer.json") -> dict[str, Any]:
    """vocab, config fields, template, added tokens and decoder of a parsed `tokenizer.json`."""
    model = d.get("model") or {}
    if model.get("type") != "WordPiece":
        raise TokenizerError(
            f"{source}: model type {model.get('type')!r} is not WordPiece; a byte-level BPE "
            "tokenizer.json loads with lmstack.tokenizer.Tokenizer.load")
    vocab = {str(t): int(i) for t, i in (model.get("vocab") or {}).items()}
    if not vocab:
        raise TokenizerError(f"{source}: model.vocab is empty")
    config = {"unk_token": model.get("unk_token", "[UNK]"),
              "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
              "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
              **_normalizer(d.get("normalizer"), source)}
    _check_pre_tokenizer(d.get("pre_tokenizer"), source)
    added = _added_tokens(d.get("added_tokens") or [], source)
    ids = {**vocab, **{t.content: t.id for t in added}}
    template, names = _post_processor(d.get("post_processor"), ids, source)
    return dict(vocab=vocab, config={**config, **names}, template=template, added_tokens=added,
                decoder=_decoder(d.get("decoder"), config["continuing_subword_prefix"], source))


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(d, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _normalizer(n: dict | None, source: str) -> dict[str, Any]:
    """WordPieceConfig fields for a `BertNormalizer` (or none: no normalization at all)."""
    if n is None:
        return dict(clean_text=False, tokenize_chinese_chars=False, strip_accents=False,
                    do_lower_case=False)
    if n.get("type") != "BertNormalizer":
        raise TokenizerError(f"{source}: normalizer {n.get('type')!r} is not supported; "
                             "only BertNormalizer (or null)")
    return dict(clean_text=bool(n.get("clean_text", True)),
                tokenize_chinese_chars=bool(n.get("handle_chinese_chars", True)),
                strip_accents=n.get("strip_accents"), do_lower_case=bool(n.get("lowercase", True)))


def _check_pre_tokenizer(p: dict | None, source: str) -> None:
    if (p or {}).get("type") != "BertPreTokenizer":
        raise TokenizerError(f"{source}: pre_tokenizer {p and p.get('type')!r} is not "
                             "supported; only BertPreTokenizer")


def _added_tokens(tokens: list[dict], source: str) -> tuple[AddedToken, ...]:
    out = []
    for t in tokens:
        for flag in ("lstrip", "rstrip", "single_word"):
            if t.get(flag):
                raise TokenizerError(f"{source}: added token {t.get('content')!r} has {flag}=true, "
                                     "which is not supported")
        out.append(AddedToken(str(t["content"]), int(t["id"]), bool(t.get("special", False)),
                              bool(t.get("normalized", not t.get("special", False)))))
    return tuple(out)


def _post_processor(p: dict | None, ids: dict[str, int],
                    source: str) -> tuple[Template, dict[str, str]]:
    """The template and the [CLS]/[SEP] names it uses (for the config's cls_token, sep_token)."""
    kind = (p or {}).get("type")
    if p is None:
        return Template.empty(), {}
    if kind == "BertProcessing":
        (sep, sep_id), (cls, cls_id) = p["sep"], p["cls"]
        return Template.bert({cls: int(cls_id), sep: int(sep_id)}, cls, sep), \
            {"cls_token": cls, "sep_token": sep}
    if kind == "TemplateProcessing":
        specials = {name: (tuple(int(i) for i in s["ids"]), tuple(s["tokens"]))
                    for name, s in (p.get("special_tokens") or {}).items()}
        template = Template(_layout(p["single"], source), _layout(p["pair"], source), specials)
        names = [piece for piece, _ in template.single if piece not in ("$A", "$B")]
        guess = {"cls_token": names[0], "sep_token": names[-1]} if len(names) == 2 else {}
        return template, {k: v for k, v in guess.items() if v in ids}
    raise TokenizerError(f"{source}: post_processor {kind!r} is not supported; only "
                         "BertProcessing, TemplateProcessing or null")


def _layout(items: list[dict], source: str) -> tuple[tuple[str, int], ...]:
    """A TemplateProcessing `single`/`pair` list as (piece, type id): "$A", "$B" or a name."""
    out = []
    for item in items:
        if "Sequence" in item:
            out.append(("$" + item["Sequence"]["id"], int(item["Sequence"].get("type_id", 0))))
        elif "SpecialToken" in item:
            out.append((item["SpecialToken"]["id"], int(item["SpecialToken"].get("type_id", 0))))
        else:
            raise TokenizerError(f"{source}: post_processor template item {item!r} is neither a "
                                 "Sequence nor a SpecialToken")
    return tuple(out)


def _decoder(d: dict | None, prefix: str, source: str) -> dict | None:
    """The decoder: WordPiece (with its `cleanup` flag) or None (tokens joined by spaces)."""
    if d is None:
        return None
    if d.get("type") != "WordPiece" or d.get("prefix", "##") != prefix:
        raise TokenizerError(f"{source}: decoder {d!r} is not supported; only a WordPiece decoder "
                             f"with the model's prefix {prefix!r} (or null)")
    return {"cleanup": bool(d.get("cleanup", True))}
