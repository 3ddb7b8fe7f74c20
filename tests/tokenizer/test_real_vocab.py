"""Real byte-level BPE files load and encode exactly as Hugging Face does: SmolLM2's
tokenizer.json as transformers writes it, and Qwen2-, Llama 3- and GPT-2-style files built
with `tokenizers` inside the test (NFC, Split, Digits, ByteLevel with a prefix space,
ignore_merges, a bos template, added tokens special or not, bytes without a token, ids out of
merge order). Each is compared with `tokenizers` on multilingual text, code, emoji, whitespace
and digits, and on random text."""

import json
import pickle
import random
import unicodedata

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import SpecialTokenError
from lmstack.tokenizer import Tokenizer, save_hf
from lmstack.tokenizer.gguf_vocab import tokenizer_from_gguf
from lmstack.tokenizer.hf import bytes_to_unicode
from lmstack.tokenizer.patterns import GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN
from lmstack.tokenizer.pretokenize import Split

from .conftest import REAL_TEXTS

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402

# `tokenizers` normalizes with older Unicode tables than Python 3.11's (Unicode 14): a
# character assigned since that has a decomposition (U+A7F2 ꟲ, NFKC "C") is left alone there.
# Random text leaves those out: characters known to Unicode 3.2, or without a decomposition.
stable = st.characters(exclude_categories=["Cs", "Cn"]).filter(
    lambda ch: not unicodedata.decomposition(ch) or unicodedata.ucd_3_2_0.category(ch) != "Cn")
assigned = st.text(alphabet=stable, max_size=80)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _isolated(pattern):
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


def _byte_level(**kw):
    return pre_tokenizers.ByteLevel(**{"add_prefix_space": False, "use_regex": False, **kw})


PIPELINES = {  # name: (normalizer, pre-tokenizer, ignore_merges)
    "qwen2": (normalizers.NFC(), [_isolated(QWEN2_PATTERN), _byte_level()], False),
    "llama3": (None, [_isolated(LLAMA3_PATTERN), _byte_level()], True),
    "gpt2-prefix": (None, [_byte_level(add_prefix_space=True, use_regex=True)], False),
    "digits-prefix": (normalizers.Sequence([normalizers.NFD(), normalizers.NFKC()]),
                      [pre_tokenizers.Digits(individual_digits=True),
                       _byte_level(add_prefix_space=True, use_regex=True)], False),
    "removed-inverted": (None, [pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}"), "removed",
                                                     invert=True),
                                pre_tokenizers.Split(" ", "removed"), _byte_level()], False),
}


def _train(corpus, name, vocab_size=700):
    normalizer, steps, ignore_merges = PIPELINES[name]
    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        hf.normalizer = normalizer
    hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(corpus, trainer)
    return hf


def _ours(hf, tmp_path, name="tokenizer.json"):
    hf.save(str(tmp_path / name))
    return Tokenizer.load(tmp_path / name)


@pytest.fixture(scope="module")
def pipelines(corpus, tmp_path_factory):
    """Every pipeline trained on the corpus: {name: (tokenizers', ours)}."""
    out = {}
    for name in PIPELINES:
        hf = _train(corpus, name)
        if name == "qwen2":  # Qwen2.5's <tool_call> is an added token that is not special
            hf.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
        out[name] = hf, _ours(hf, tmp_path_factory.mktemp(name))
    return out


# ---- SmolLM2 as transformers writes it ----------------------------------------------------
@pytest.fixture(scope="module")
def smol_json(smol_transformers):
    hf, directory = smol_transformers
    return hf, Tokenizer.load(directory), tokenizers.Tokenizer.from_file(
        str(directory / "tokenizer.json"))


@pytest.mark.parametrize("text", REAL_TEXTS)
def test_smollm2_tokenizer_json_equals_transformers(smol_json, text):
    hf, ours, raw = smol_json
    ids = ours.encode(text)
    assert ids == hf(text, add_special_tokens=False).input_ids
    assert ours.encode(text, add_special_tokens=True) == hf(text).input_ids
    assert ours.decode(ids) == raw.decode(ids, skip_special_tokens=False)


def test_smollm2_tokenizer_json_is_the_gguf_vocabulary(smol_json, smol_meta):
    _, ours, _ = smol_json
    from_gguf = tokenizer_from_gguf(smol_meta)
    assert ours.vocab == from_gguf.vocab and ours.merges == from_gguf.merges
    assert ours.special_tokens == from_gguf.special_tokens
    assert sum(i is None for i in ours.byte_ids) == 21 and ours.fast_engine.name == "tiktoken"
    # transformers wrote GPT-2's ByteLevel regex; the GGUF name adds the digit split (see
    # test_gguf_vocab.py), the one place the two files cut text differently
    assert ours.encode("  1") == [216, 216, 33] and from_gguf.encode("  1") == [256, 33]


def test_smollm2_specials_need_allowing(smol_json):
    hf, ours, _ = smol_json
    text = "<|im_start|>system\nBe brief.<|im_end|>"
    with pytest.raises(SpecialTokenError):
        ours.encode(text)
    assert ours.encode(text, allowed_special={"<|im_start|>", "<|im_end|>"}) == \
        hf(text, add_special_tokens=False).input_ids


# ---- pipelines built with tokenizers ------------------------------------------------------
@pytest.mark.parametrize("name", PIPELINES)
def test_pipelines_equal_tokenizers(pipelines, corpus, name):
    hf, ours = pipelines[name]
    for text in REAL_TEXTS + corpus[:8] + ["a<|endoftext|>b <|im_start|>x<tool_call>y"]:
        expected = hf.encode(text).ids
        assert ours.encode(text, allowed_special="all") == expected, text
        assert ours.encode(text, allowed_special="all", engine="reference") == expected, text


@settings(max_examples=200, deadline=None)
@given(assigned)
def test_pipelines_equal_tokenizers_on_any_text(pipelines, text):
    for hf, ours in pipelines.values():
        assert ours.encode(text, allowed_special="all") == hf.encode(text).ids


@pytest.mark.parametrize("name", PIPELINES)
def test_pipelines_decode_what_they_encode(pipelines, name):
    hf, ours = pipelines[name]
    for text in REAL_TEXTS:
        ids = ours.encode(text)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_nfc_runs_before_splitting(pipelines):
    hf, ours = pipelines["qwen2"]
    nfd = "Cre\u0300me bru\u0302le\u0301e"
    assert ours.encode(nfd) == ours.encode("Crème brûlée") == hf.encode(nfd).ids
    assert ours.pretokenizer.normalizers == ("NFC",)


def test_added_tokens_that_are_not_special_always_match(pipelines):
    hf, ours = pipelines["qwen2"]
    tool = hf.token_to_id("<tool_call>")
    assert ours.added_tokens == {"<tool_call>": tool} and "<tool_call>" not in ours.special_tokens
    assert ours.encode_ordinary("a<tool_call>b") == hf.encode("a<tool_call>b").ids
    assert tool in ours.encode("x <tool_call>")  # no SpecialTokenError: it is ordinary text
    assert ours.decode([tool]) == "<tool_call>" and ours.byte_lengths()[tool] == 11


def test_prefix_space_goes_on_every_piece(pipelines):
    """HF's ByteLevel adds the space to each piece it is handed: each digit, each segment
    between special tokens (not only the start of the text)."""
    for name in ("gpt2-prefix", "digits-prefix"):
        hf, ours = pipelines[name]
        for text in ("hello", " hello", "a1b22", "x<|endoftext|>y", ""):
            assert ours.encode(text, allowed_special="all") == hf.encode(text).ids


def test_llama3_template_adds_bos(corpus, tmp_path):
    hf = _train(corpus, "llama3")
    bos = hf.token_to_id("<|endoftext|>")
    hf.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                      special_tokens=[("<|endoftext|>", bos)])])
    ours = _ours(hf, tmp_path)
    assert ours.add_bos and ours.bos_id == bos and not ours.add_eos
    for text in ("Hello there", "", "x" * 20):
        assert ours.encode(text, add_special_tokens=True) == hf.encode(text).ids
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    back = tokenizers.Tokenizer.from_file(str(save_hf(ours, tmp_path / "back")))
    assert back.encode("Hello there").ids == hf.encode("Hello there").ids


@pytest.mark.parametrize("ignore_merges", [True, False])
def test_a_token_no_merge_makes(corpus, tmp_path, ignore_merges):
    """With ignore_merges (Llama 3) a piece that is a token is taken whole, even one the merges
    cannot make; without, such a token is never produced. Both as tokenizers does."""
    d = json.loads(_train(corpus, "llama3").to_str())
    d["model"]["ignore_merges"] = ignore_merges
    d["model"]["vocab"]["Ġzyzzyva"] = new = len(d["model"]["vocab"]) + len(SPECIALS)
    hf = tokenizers.Tokenizer.from_str(json.dumps(d))
    ours = _ours(hf, tmp_path)
    text = "a zyzzyva, two zyzzyvas"
    assert ours.encode(text) == hf.encode(text).ids
    assert (new in ours.encode(text)) == ignore_merges
    # tiktoken cannot hold a whole-only token without merging into it: the Python engine runs
    assert ours.fast_engine.name == ("python" if ignore_merges else "tiktoken")


def test_ids_out_of_merge_order(pipelines, corpus, tmp_path):
    """Shuffle the ids of merged tokens: merges still go by list place (tiktoken gets ranks
    and a map back to ids). The negative control: ranking by id instead gives other ids."""
    hf, _ = pipelines["llama3"]
    d = json.loads(hf.to_str())
    vocab = d["model"]["vocab"]
    merged = sorted(i for s, i in vocab.items() if len(s) > 1 and s not in SPECIALS)
    shuffled = dict(zip(merged, random.Random(0).sample(merged, len(merged))))
    d["model"]["vocab"] = {s: shuffled.get(i, i) for s, i in vocab.items()}
    hf2 = tokenizers.Tokenizer.from_str(json.dumps(d))
    ours = _ours(hf2, tmp_path)
    assert ours.fast_engine.name == "tiktoken" and ours.fast_engine.remap is not None
    wrong = tiktoken.Encoding("by-id", pat_str=LLAMA3_PATTERN, special_tokens={},
                              mergeable_ranks={b: i for i, b in ours.vocab.items()})
    differ = 0
    for text in corpus[:10] + REAL_TEXTS:
        assert ours.encode(text, allowed_special="all") == hf2.encode(text).ids
        differ += wrong.encode_ordinary(text) != hf2.encode(text).ids
    assert differ > 5


def _hand_made(tmp_path, merges, extra=()):
    """A byte-level tokenizer.json with every byte but 0x04 and 0xF0, and these merges."""
    table = bytes_to_unicode()
    vocab = {table[b]: i for i, b in enumerate(b for b in range(256) if b not in (4, 0xF0))}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in extra:
        vocab.setdefault(token, len(vocab))
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return hf, _ours(hf, tmp_path)


def test_an_unlisted_pair_never_merges(tmp_path):
    """"abc" is listed as ab+c, but b+c merges first: HF keeps [a, bc]. tiktoken, which merges
    any pair that forms a token, would make "abc", so the check sends it to Python."""
    hf, ours = _hand_made(tmp_path, [("b", "c"), ("a", "b"), ("ab", "c")])
    assert ours.encode("abc") == hf.encode("abc").ids == [ours.ranks[b"a"], ours.ranks[b"bc"]]
    assert ours.fast_engine.name == "python" and "b'abc'" in ours.fast_engine.why


def test_bytes_without_a_token_are_dropped(tmp_path):
    hf, ours = _hand_made(tmp_path, [("!", "!"), ("a", "b")])
    assert ours.byte_ids[4] is None and ours.byte_ids[0xF0] is None
    for text in ("!\x04!", "a\x04b", "\x04", "😀 a😀b", "ab\x04ab!\x04\x04!", "!!"):
        assert ours.encode(text) == hf.encode(text).ids  # "!\x04!" -> "!!": neighbours merge
    assert ours.decode(ours.encode("x\x04y")) == "xy"


def test_split_steps_equal_tokenizers_pre_tokenize(pipelines):
    """Our Split steps cut text as tokenizers' Split does, empty matches included."""
    cases = [(r"\p{N}", "isolated", False), (r"x*", "isolated", False), (r"\s+", "removed", False),
             (r"\p{L}+", "removed", True), (r"\p{L}+", "isolated", True)]
    for rx, behavior, invert in cases:
        theirs = pre_tokenizers.Split(Regex(rx), behavior, invert=invert)
        for text in ("ab12 cd  e3", "xxaxbx", "", "  ", "α1β"):
            ours = Split(rx, behavior, invert).apply(text)
            assert ours == [p for p, _ in theirs.pre_tokenize_str(text)], (rx, text)


def test_imported_files_round_trip(pipelines, tmp_path):
    for name, (hf, ours) in pipelines.items():
        again = Tokenizer.load(ours.save(tmp_path / f"{name}.json"))
        assert again == ours and again.fingerprint == ours.fingerprint
        assert pickle.loads(pickle.dumps(ours)) == ours
        back = tokenizers.Tokenizer.from_file(str(save_hf(ours, tmp_path / f"{name}-hf.json")))
        for text in REAL_TEXTS[:12]:
            assert back.encode(text).ids == hf.encode(text).ids
    assert json.loads((tmp_path / "qwen2.json").read_text())["version"] == 2


def test_gpt2_pattern_is_what_bytelevel_splits_with():
    text = "Hello  world's 123 !! \n\n x"
    theirs = [p for p, _ in pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                     use_regex=True).pre_tokenize_str(text)]
    ours = Split(GPT2_PATTERN).apply(text)
    table = bytes_to_unicode()
    assert ["".join(table[b] for b in p.encode()) for p in ours] == theirs


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_covering_patterns_match_at_every_character(text):
    """What lets findall stand for an isolated split (pretokenize.py, engines.py): the pieces
    of these patterns put back together are the whole text, so nothing fell between them."""
    from lmstack.tokenizer.patterns import COVERING_PATTERNS, compile_pattern

    for pattern in COVERING_PATTERNS:
        assert "".join(compile_pattern(pattern).findall(text)) == text
