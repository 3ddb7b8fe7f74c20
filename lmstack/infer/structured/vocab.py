"""The vocabulary as a constraint engine sees it: the bytes each token id writes.

Special tokens (<|im_start|>, ...) write markup, not text, so no constraint ever allows them,
except the end ids, which are allowed exactly when the output is complete. Ids past the
tokenizer's (a model's embedding is often padded to a multiple of 64) are never allowed.

    >>> from lmstack.tokenizer import Tokenizer
    >>> tok = Tokenizer("gpt2", [(104, 105, 256)], {"<|endoftext|>": 257})
    >>> v = TokenVocab.from_tokenizer(tok, vocab_size=260)
    >>> v.token_bytes[256], v.token_bytes[257], v.end_ids, len(v.token_bytes)
    (b'hi', None, (257,), 260)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmstack.errors import ConfigError


@dataclass(frozen=True)
class TokenVocab:
    """`token_bytes[i]`: the bytes id i writes, None for ids no constraint may produce
    (specials, padding); `end_ids`: the ids that end the output."""

    token_bytes: tuple[bytes | None, ...]
    end_ids: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of ids (the model's vocab_size)."""
        return len(self.token_bytes)

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None,
                       end_ids: Sequence[int] | None = None) -> TokenVocab:
        """The vocabulary of our Tokenizer; `end_ids` default to its eos, else <|endoftext|>."""
        size = vocab_size or tokenizer.vocab_size
        if size < tokenizer.vocab_size:
            raise ConfigError(f"vocab_size {size} is smaller than the tokenizer's "
                              f"{tokenizer.vocab_size}")
        table: list[bytes | None] = [None] * size
        for i, b in tokenizer.vocab.items():
            table[i] = b
        for name, i in tokenizer.added_tokens.items():
            table[i] = name.encode()  # added tokens write their text
        if end_ids is None:
            eos = tokenizer.eos_id
            end_ids = [eos] if eos is not None else [tokenizer.eot_id]
        return cls(tuple(table), tuple(sorted(set(int(i) for i in end_ids))))
