"""Show how a tokenizer sees text: pieces from the split pattern, then the tokens in each.

    lmstack tokenizer inspect --tokenizer tok.json --text "def hello(): return 42"

Learners ask "why is this word three tokens?"; the answer is in the two stages, so both are
shown: the pre-tokenization piece, and the token ids and bytes BPE made of it.
"""

from __future__ import annotations

from lmstack.tokenizer.tokenizer import Tokenizer, fix_surrogates


def show_bytes(data: bytes) -> str:
    """A token's bytes as readable text: printable text as is, the rest escaped.

    >>> show_bytes(b" hello"), show_bytes(b"\\n\\t"), show_bytes(b"\\xe4\\xbd")
    ('␣hello', '\\\\n\\\\t', '\\\\xe4\\\\xbd')
    """
    text = data.decode("utf-8", "backslashreplace")
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return text.replace(" ", "␣")


def inspect_text(tok: Tokenizer, text: str) -> str:
    """A table of pieces and their tokens, with totals, for the terminal."""
    lines = [f"{'piece':<24} tokens"]
    n_tokens = 0
    for piece in tok.pretokenizer.pieces(fix_surrogates(text)):
        ids = tok.encode_piece(piece.encode("utf-8"))
        n_tokens += len(ids)
        parts = " ".join(f"{i}:{show_bytes(tok.token_bytes(i))}" for i in ids)
        lines.append(f"{show_bytes(piece.encode()):<24} {parts}")
    n_bytes = len(text.encode("utf-8", "replace"))
    ratio = n_bytes / n_tokens if n_tokens else 0.0
    lines.append(f"{len(text)} characters, {n_bytes} bytes, {n_tokens} tokens, "
                 f"{ratio:.2f} bytes/token")
    return "\n".join(lines)


def describe(tok: Tokenizer, longest: int = 10) -> str:
    """A summary of the tokenizer itself: size, pattern, specials, longest tokens."""
    tokens = sorted(tok.vocab.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:longest]
    n_bytes = sum(i is not None for i in tok.byte_ids)
    engine = tok.fast_engine
    return "\n".join([
        f"vocab_size   {tok.vocab_size} ({n_bytes} bytes + {len(tok.merges)} merges + "
        f"{len(tok.special_tokens)} specials)",
        f"fingerprint  {tok.fingerprint}",
        f"rule         {tok.rule}" + (", ignore_merges" if tok.ignore_merges else ""),
        f"engine       {engine.name}" + (f" ({engine.why})" if engine.why else ""),
        f"pattern      {tok.pattern}",
        "specials     " + ", ".join(f"{s}={i}" for s, i in tok.special_tokens.items()),
        "longest      " + "  ".join(f"{i}:{show_bytes(b)}" for i, b in tokens),
    ])
