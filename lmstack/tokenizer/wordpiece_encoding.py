"""What an encoder model is fed: special tokens around the text, token types, truncation, padding.

BERT (Devlin et al. 2019) reads one text as `[CLS] A [SEP]` and a pair (question and passage,
two sentences) as `[CLS] A [SEP] B [SEP]`, with a token type id of 0 on the first segment and 1
on the second. A `Template` holds that layout (Hugging Face's `TemplateProcessing` and
`BertProcessing` both read into one); `truncate_pair` is `tokenizers`' "longest first" rule;
`pad` right-pads a batch to its longest row with an attention mask of 0 on the padding.

    >>> t = Template.bert({"[CLS]": 101, "[SEP]": 102})
    >>> t.apply([7, 8], ["a", "b"], [9], ["c"])
    ([101, 7, 8, 102, 9, 102], ['[CLS]', 'a', 'b', '[SEP]', 'c', '[SEP]'], [0, 0, 0, 0, 1, 1])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmstack.errors import TokenizerError

SEQUENCES = ("$A", "$B")


@dataclass
class Encoding:
    """One encoded text (or pair): ids, their token type ids, attention mask and token strings."""

    ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    tokens: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Batch:
    """Encodings padded to one length: rows of ids, token type ids and attention masks."""

    ids: list[list[int]]
    token_type_ids: list[list[int]]
    attention_mask: list[list[int]]
    tokens: list[list[str]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Template:
    """Where special tokens go around one sequence ("$A") or a pair ("$A", "$B").

    `single` and `pair` list (piece, token type id); a piece other than "$A"/"$B" names a
    special token, whose ids and token strings `specials` gives (one name may stand for several).
    """

    single: tuple[tuple[str, int], ...]
    pair: tuple[tuple[str, int], ...]
    specials: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, layout, wanted in (("single", self.single, ["$A"]),
                                     ("pair", self.pair, ["$A", "$B"])):
            found = [piece for piece, _ in layout if piece in SEQUENCES]
            if found != wanted:
                raise TokenizerError(f"post-processor template {name!r} must hold {wanted} once "
                                     f"each, in that order; it holds {found}")
            missing = [p for p, _ in layout if p not in SEQUENCES and p not in self.specials]
            if missing:
                raise TokenizerError(f"post-processor template {name!r} uses {missing}, which its "
                                     "special_tokens does not define")

    @classmethod
    def bert(cls, cls_sep_ids: dict[str, int], cls_token: str = "[CLS]",
             sep_token: str = "[SEP]") -> Template:
        """BERT's layout: `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]`, B with type id 1."""
        specials = {t: ((cls_sep_ids[t],), (t,)) for t in (cls_token, sep_token)}
        return cls(single=((cls_token, 0), ("$A", 0), (sep_token, 0)),
                   pair=((cls_token, 0), ("$A", 0), (sep_token, 0), ("$B", 1), (sep_token, 1)),
                   specials=specials)

    @classmethod
    def empty(cls) -> Template:
        """No special tokens at all (a tokenizer.json without a post-processor)."""
        return cls(single=(("$A", 0),), pair=(("$A", 0), ("$B", 1)))

    def num_added(self, is_pair: bool) -> int:
        """How many special-token ids the layout adds to one text or to a pair.

        >>> Template.bert({"[CLS]": 1, "[SEP]": 2}).num_added(True)
        3
        """
        layout = self.pair if is_pair else self.single
        return sum(len(self.specials[p][0]) for p, _ in layout if p not in SEQUENCES)

    def apply(self, a_ids: list[int], a_tokens: list[str], b_ids: list[int] | None = None,
              b_tokens: list[str] | None = None) -> tuple[list[int], list[str], list[int]]:
        """(ids, tokens, token type ids) of the sequence(s) laid out with the special tokens."""
        layout = self.single if b_ids is None else self.pair
        sequences = {"$A": (a_ids, a_tokens), "$B": (b_ids, b_tokens)}
        ids: list[int] = []
        tokens: list[str] = []
        types: list[int] = []
        for piece, type_id in layout:
            piece_ids, piece_tokens = sequences.get(piece) or self.specials[piece]
            ids += piece_ids
            tokens += piece_tokens
            types += [type_id] * len(piece_ids)
        return ids, tokens, types


def truncate_pair(n_a: int, n_b: int, room: int) -> tuple[int, int]:
    """Lengths of a pair cut to fit `room` tokens, the longer one first ("longest first").

    As in `tokenizers`: a token at a time comes off the longer sequence, off the first on a
    tie, so an odd token left over stays with the longer one (with the second on a tie).

    >>> truncate_pair(3, 4, 10)
    (3, 4)
    >>> truncate_pair(10, 3, 8), truncate_pair(3, 10, 8)
    ((5, 3), (3, 5))
    >>> truncate_pair(10, 9, 9), truncate_pair(9, 10, 9), truncate_pair(9, 9, 9)
    ((5, 4), (4, 5), (4, 5))
    """
    if n_a + n_b <= room:
        return n_a, n_b
    if min(n_a, n_b) <= room // 2:  # only the longer one is cut, down to what the other leaves
        return (room - n_b, n_b) if n_a > n_b else (n_a, room - n_a)
    half, rest = room // 2, room - room // 2
    return (rest, half) if n_a > n_b else (half, rest)


def pad(encodings: list[Encoding], pad_id: int, pad_token: str) -> Batch:
    """Right-pad encodings to the longest: pad id, token type 0, attention mask 0."""
    width = max(len(e) for e in encodings)
    rows = [(width - len(e), e) for e in encodings]
    return Batch(ids=[e.ids + [pad_id] * n for n, e in rows],
                 token_type_ids=[e.token_type_ids + [0] * n for n, e in rows],
                 attention_mask=[e.attention_mask + [0] * n for n, e in rows],
                 tokens=[e.tokens + [pad_token] * n for n, e in rows])
