"""Our `Tokenizer` as GGUF `tokenizer.ggml.*` metadata, the way llama.cpp reads a byte-level BPE.

What is written (the reading side, with the meaning of each key: tokenizer/gguf_vocab.py):

- `model` "gpt2" (byte-level BPE); `tokens`: every id 0..vocab_size-1, ordinary tokens spelled
  in GPT-2's byte-to-unicode alphabet ("Ġhello"), special and added tokens as their text, and
  ids no token uses (an embedding padded past the vocabulary) as "[PAD<id>]";
- `token_type`: 1 normal, 3 control (our special tokens: matched in text only when asked, like
  llama.cpp's `parse_special`), 4 user-defined (added tokens, always matched), 5 unused (pads);
- `merges` in rank order: an imported vocabulary's own list; for one trained here (the id rule:
  merge the pair whose concatenation has the lowest id) every split of every token into two
  tokens, ordered by the token's id, which makes the rank rule pick the pairs ours does (hf.py);
- `pre`: the llama.cpp pre-tokenizer name whose regexes are our split steps
  (patterns.LLAMA_CPP_PRE). Our "gpt4" pattern is llama.cpp's "llama-bpe" (Llama 3's regex)
  spelled as tiktoken's cl100k does — `'(?i:[sdmt]|ll|ve|re)` for `(?i:'s|'t|...)` and
  `\\s*[\\r\\n]` for `\\s*[\\r\\n]+` — which cut every text the same way. A pipeline no name stands
  for (a custom regex, a prefix space) is refused: llama.cpp would cut the text otherwise.
- `bos_token_id`, `eos_token_id`, `add_bos_token`, `add_eos_token` (as our encoder adds them),
  and `tokenizer.chat_template` when the model directory has one.

llama.cpp looks a whole piece up before merging ("ignore_merges") only for the Llama 3 names;
our id rule always does (as tiktoken does). Where the two differ, a token that the merges alone
cannot rebuild from its bytes would encode differently; `unreachable_tokens` finds them and the
export warns with their number. Unicode normalization (Qwen2's NFC) is not run by llama.cpp
either; the export warns, and text already in NFC is cut the same.

Tests: `pytest tests/interop/test_gguf_export.py`.
"""

from __future__ import annotations

import warnings

from lmstack.errors import TokenizerError
from lmstack.interop.gguf_file import STRING
from lmstack.interop.gguf_writer import INT32, Value, array, boolean, string, u32
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.bpe import bpe_merge
from lmstack.tokenizer.gguf_vocab import CONTROL, IGNORE_MERGES_PRE, NORMAL, UNUSED, USER_DEFINED
from lmstack.tokenizer.hf import to_hf_dict
from lmstack.tokenizer.patterns import GPT4_PATTERN, LLAMA3_PATTERN, LLAMA_CPP_PRE
from lmstack.tokenizer.pretokenize import Split

# Tried first, in this order: the names llama.cpp's own converter writes for these families.
PREFERRED_PRE = ("gpt-2", "llama-bpe", "qwen2", "smollm")
# Regexes that cut every text as another one does (the module docstring says why).
SAME_CUTS = {GPT4_PATTERN: LLAMA3_PATTERN}


def pre_tokenizer_name(tok: Tokenizer) -> str:
    """The llama.cpp `tokenizer.ggml.pre` name that splits text as `tok` does; TokenizerError
    if there is none."""
    steps = tok.pretokenizer.steps
    regexes = []
    for step in steps:
        # llama.cpp keeps the text between matches (isolated); a findall regex (removed,
        # inverted) that can match every character, as all the named ones can, leaves none.
        isolated = isinstance(step, Split) and (step.behavior, step.invert) == ("isolated", False)
        findall = isinstance(step, Split) and (step.behavior, step.invert) == ("removed", True)
        if not (isolated or findall):
            regexes = None
            break
        regexes.append(SAME_CUTS.get(step.regex, step.regex))
    names = [*PREFERRED_PRE, *sorted(LLAMA_CPP_PRE)]
    found = next((n for n in names if regexes and LLAMA_CPP_PRE.get(n) == tuple(regexes)), None)
    if found is None:
        raise TokenizerError(
            f"the tokenizer splits text with {[getattr(s, 'regex', s) for s in steps]}, which no "
            "llama.cpp pre-tokenizer name stands for (llama.cpp would cut text differently); "
            "train the tokenizer with --pattern gpt2 or gpt4 to export it to GGUF")
    return found


def unreachable_tokens(tok: Tokenizer) -> list[int]:
    """Ids of tokens that merging alone does not rebuild from their bytes (they encode as one
    token only where a whole piece is looked up first).

    >>> from lmstack.tokenizer import train_bpe
    >>> unreachable_tokens(train_bpe(["low lower lowest"] * 4, vocab_size=266, progress=False))
    []
    """
    out = []
    if tok.rule == "id":
        ranks = dict(tok.ranks)
        for i, data in tok.vocab.items():
            if len(data) < 2:
                continue
            del ranks[data]  # without it, merging stops one step short: two parts, if reachable
            if len(bpe_merge(data, ranks)) != 2:
                out.append(i)
            ranks[data] = i
        return out
    for i, data in tok.vocab.items():
        if len(data) > 1 and tok.merge_ids([tok.byte_ids[b] for b in data]) != [i]:
            out.append(i)
    return out


def _tokens(tok: Tokenizer, n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(token texts, token types, merges as "left right") for ids 0..n_vocab-1."""
    if tok.vocab_size > n_vocab:
        raise TokenizerError(f"the tokenizer has {tok.vocab_size} ids but the model's embedding "
                             f"only {n_vocab}; they do not belong together")
    hf = to_hf_dict(tok)["model"]
    texts: list[str | None] = [None] * n_vocab
    types = [UNUSED] * n_vocab
    for text, i in hf["vocab"].items():
        texts[i], types[i] = text, NORMAL
    for table, kind in ((tok.special_tokens, CONTROL), (tok.added_tokens, USER_DEFINED)):
        for text, i in table.items():
            texts[i], types[i] = text, kind
    used = {t for t in texts if t is not None}
    for i, t in enumerate(texts):
        if t is None:  # an id past the vocabulary: a unique placeholder, never produced
            pad = f"[PAD{i}]"
            while pad in used:
                pad = f"[{pad}]"
            texts[i] = pad
            used.add(pad)
    return texts, types, [" ".join(m) for m in hf["merges"]]


def vocab_metadata(tok: Tokenizer, n_vocab: int, eos_ids: list[int] | None = None,
                   bos_id: int | None = None, template: str | None = None) -> dict[str, Value]:
    """The `tokenizer.*` keys of a GGUF file for a tokenizer feeding an n_vocab embedding."""
    pre = pre_tokenizer_name(tok)
    if tok.pretokenizer.normalizers:
        warnings.warn(f"the tokenizer normalizes text ({', '.join(tok.pretokenizer.normalizers)}) "
                      "and llama.cpp does not: text not already normalized may encode differently",
                      stacklevel=3)
    ours_whole_first = tok.rule == "id" or tok.ignore_merges
    if ours_whole_first != (pre in IGNORE_MERGES_PRE):
        odd = unreachable_tokens(tok)
        if odd:
            warnings.warn(f"{len(odd)} tokens (e.g. ids {odd[:5]}) are not rebuilt by the merges; "
                          f"llama.cpp's '{pre}' pre-tokenizer does "
                          f"{'not ' if ours_whole_first else ''}look whole pieces up first, so a "
                          "piece equal to one of them encodes differently there", stacklevel=3)
    texts, types, merges = _tokens(tok, n_vocab)
    eos = (eos_ids or [None])[0]
    eos = eos if eos is not None else tok.eos_id
    if eos is None:
        eos = tok.special_tokens.get("<|endoftext|>")
    bos = bos_id if bos_id is not None else (tok.bos_id if tok.bos_id is not None else eos)
    meta = {"tokenizer.ggml.model": string("gpt2"), "tokenizer.ggml.pre": string(pre),
            "tokenizer.ggml.tokens": array(STRING, texts),
            "tokenizer.ggml.token_type": array(INT32, types),
            "tokenizer.ggml.merges": array(STRING, merges)}
    for key, value in (("bos_token_id", bos), ("eos_token_id", eos)):
        if value is not None:
            meta[f"tokenizer.ggml.{key}"] = u32(value)
    meta["tokenizer.ggml.add_bos_token"] = boolean(tok.add_bos)  # else llama-bpe adds one
    meta["tokenizer.ggml.add_eos_token"] = boolean(tok.add_eos)
    if template:
        meta["tokenizer.chat_template"] = string(template)
    return meta
