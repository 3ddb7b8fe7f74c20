"""A GGUF file's tokenizer metadata (llama.cpp's `tokenizer.ggml.*` keys) as our `Tokenizer`.

GGUF (ggml-org/ggml docs/gguf.md) keeps a byte-level BPE as metadata: `tokenizer.ggml.model`
"gpt2", `tokens` (every id's text, byte-level spelled as in `tokenizer.json`), `merges`
("Ġ t", in rank order), `token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte), `pre` (a pre-tokenizer *name*, which patterns.LLAMA_CPP_PRE turns into
regexes as llama.cpp's src/llama-vocab.cpp does), the bos/eos/unk/pad ids and `add_bos_token`.

What becomes what: normal and unused tokens are the vocabulary; control and unknown tokens are
special tokens (encoded only when allowed, like llama.cpp's `parse_special`); user-defined ones
are added tokens, always matched whole in text. Merges follow the rank rule (bpe.py), with
`ignore_merges` for the Llama 3 family as llama.cpp sets it.

Where llama.cpp and transformers' GGUF loader disagree, the name wins: transformers does not
know "smollm" and splits SmolLM2 with GPT-2's regex alone, so "  1" is [216, 216, 33] there and
[256, 33] here, in llama.cpp and in SmolLM2's own tokenizer.json (each digit split off first).
A byte without a token is dropped as `tokenizers` does (llama.cpp keeps it as a barrier).
Refused by name: other tokenizer models (SentencePiece "llama", "t5", ...), unknown
pre-tokenizer names, `add_space_prefix` on a gpt2 vocabulary (llama.cpp ignores it,
transformers adds a space). No torch here: the GGUF reader (lmstack/interop) calls this.

    from lmstack.tokenizer.gguf_vocab import tokenizer_from_gguf
    tok = tokenizer_from_gguf(metadata)   # metadata: {"tokenizer.ggml.model": "gpt2", ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmstack.errors import TokenizerError
from lmstack.tokenizer.hf import bytes_to_unicode, to_bytes
from lmstack.tokenizer.patterns import LLAMA_CPP_PRE
from lmstack.tokenizer.pretokenize import Pretokenizer, Split
from lmstack.tokenizer.tokenizer import Tokenizer

KEY = "tokenizer.ggml."
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp sets ignore_merges and a default add_bos for these names (the Llama 3 family).
IGNORE_MERGES_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2")
ROLE_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
             "pad": "padding_token_id"}


def chat_template_from_gguf(meta: Mapping[str, Any]) -> str | None:
    """The Jinja chat template the file carries (`tokenizer.chat_template`), if any."""
    template = meta.get("tokenizer.chat_template")
    return str(template) if template is not None else None


def chat_config_from_gguf(meta: Mapping[str, Any]) -> dict:
    """The chat template and the text of the bos/eos tokens it may write, as the keys of
    tokenizer_config.json ({"chat_template", "bos_token", "eos_token"}, those recorded).

    >>> chat_config_from_gguf({"tokenizer.chat_template": "{{ bos_token }}",
    ...     "tokenizer.ggml.tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    ...     "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2})
    {'chat_template': '{{ bos_token }}', 'bos_token': '<|im_start|>', 'eos_token': '<|im_end|>'}
    """
    tokens = meta.get(KEY + "tokens") or []
    found: dict[str, str] = {}
    if (template := chat_template_from_gguf(meta)) is not None:
        found["chat_template"] = template
    for role in ("bos", "eos"):
        i = meta.get(KEY + ROLE_KEYS[role])
        if isinstance(i, int) and 0 <= i < len(tokens):
            found[f"{role}_token"] = str(tokens[i])
    return found


def tokenizer_from_gguf(meta: Mapping[str, Any]) -> Tokenizer:
    """Our Tokenizer for a GGUF file's metadata (full key names); TokenizerError if it holds
    a tokenizer lmstack cannot represent exactly."""
    model = meta.get(KEY + "model")
    if model != "gpt2":
        raise TokenizerError(
            f"GGUF {KEY}model is {model!r}; lmstack reads byte-level BPE ('gpt2') only, not "
            "SentencePiece ('llama'), WordPiece ('bert'), Unigram ('t5') or others"
        )
    pre = meta.get(KEY + "pre") or "default"
    if pre not in LLAMA_CPP_PRE:
        raise TokenizerError(
            f"GGUF {KEY}pre is {pre!r}, a pre-tokenizer lmstack does not know; known: "
            f"{', '.join(sorted(LLAMA_CPP_PRE))}"
        )
    if meta.get(KEY + "add_space_prefix"):
        raise TokenizerError(f"GGUF {KEY}add_space_prefix is true on a gpt2 vocabulary; llama.cpp "
                             "ignores it and transformers adds a space, so lmstack will not guess")
    tokens = [str(t) for t in _required(meta, "tokens")]
    types = list(meta.get(KEY + "token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerError(f"GGUF {KEY}token_type has {len(types)} entries for "
                             f"{len(tokens)} tokens; the file is corrupt")
    vocab, specials, added = _split_vocab(tokens, types)
    return Tokenizer(
        LLAMA_CPP_PRE[pre][-1], _merges(_required(meta, "merges"), vocab), specials,
        rule="rank", vocab=vocab, ignore_merges=pre in IGNORE_MERGES_PRE,
        pretokenizer=Pretokenizer((), tuple(Split(rx) for rx in LLAMA_CPP_PRE[pre])),
        added_tokens=added, roles=_roles(meta, len(tokens)),
        add_bos=bool(meta.get(KEY + "add_bos_token", pre in IGNORE_MERGES_PRE)),
        add_eos=bool(meta.get(KEY + "add_eos_token", False)),
    )


def _required(meta: Mapping[str, Any], name: str) -> list:
    value = meta.get(KEY + name)
    if value is None:
        raise TokenizerError(f"GGUF metadata lacks {KEY}{name}; a gpt2 tokenizer needs it")
    return list(value)


def _split_vocab(tokens: list[str], types: list[int]) -> tuple[dict, dict, dict]:
    """(id -> bytes of ordinary tokens, special tokens, added tokens) by token type."""
    alphabet = set(bytes_to_unicode().values())
    vocab, specials, added = {}, {}, {}
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, UNKNOWN):
            specials[text] = i
        elif kind == USER_DEFINED:
            added[text] = i
        elif kind in (NORMAL, UNUSED):
            # As transformers does, a token outside the byte alphabet is its own UTF-8.
            vocab[i] = to_bytes(text, f"GGUF token {i}") if set(text) <= alphabet \
                else text.encode("utf-8")
        else:
            raise TokenizerError(f"GGUF token {i} {text!r} has type {kind}, which a gpt2 "
                                 "vocabulary does not use; the file is corrupt")
    return vocab, specials, added


def _merges(merges: list, vocab: dict[int, bytes]) -> list[tuple[int, int, int]]:
    """Merge strings ("Ġ t") as (left, right, new) ids."""
    ids = {b: i for i, b in vocab.items()}
    out = []
    for k, merge in enumerate(merges):
        text = str(merge)
        cut = text.find(" ", 1)  # llama.cpp's split: the first space after the first character
        parts = (text[:cut], text[cut + 1:]) if cut > 0 else ()
        try:
            left, right = (to_bytes(p, f"GGUF merge {k}") for p in parts)
            out.append((ids[left], ids[right], ids[left + right]))
        except (KeyError, ValueError):
            raise TokenizerError(f"GGUF merge {k} {text!r} does not join two tokens of the "
                                 "vocabulary into a third; the file is corrupt") from None
    return out


def _roles(meta: Mapping[str, Any], n_tokens: int) -> dict[str, int]:
    roles = {}
    for role, key in ROLE_KEYS.items():
        value = meta.get(KEY + key)
        if value is not None and 0 <= int(value) < n_tokens:
            roles[role] = int(value)
    return roles
