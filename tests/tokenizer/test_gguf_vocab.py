"""GGUF tokenizer metadata -> our Tokenizer: SmolLM2's real file against transformers' own
GGUF loader and against SmolLM2's own pre-tokenizer rebuilt with `tokenizers`; small Llama 3
and Qwen2 style vocabularies written with the `gguf` writer; refusals named."""

import json

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import SpecialTokenError, TokenizerError
from lmstack.tokenizer.gguf_vocab import chat_template_from_gguf, tokenizer_from_gguf
from lmstack.tokenizer.hf import to_str
from lmstack.tokenizer.patterns import LLAMA3_PATTERN, QWEN2_PATTERN

from .conftest import REAL_TEXTS

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")

# transformers' GGUF loader does not know llama.cpp's "smollm" name and splits with GPT-2's
# regex alone; SmolLM2's name (and its own tokenizer.json) splits each digit off first. The two
# differ only where two or more whitespace characters come before a digit.
SPLITS_DIFFER = regex.compile(r"\s\s\p{N}")
assigned = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cn"]), max_size=80)


@pytest.fixture(scope="module")
def smol(smol_meta):
    return tokenizer_from_gguf(smol_meta)


@pytest.fixture(scope="module")
def smol_original(smol_transformers):
    """SmolLM2's vocabulary with its own pre-tokenizer (`Digits(individual)`, then ByteLevel),
    which is what llama.cpp's "smollm" means, built with `tokenizers`."""
    _, directory = smol_transformers
    d = json.loads((directory / "tokenizer.json").read_text())
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ]}
    return tokenizers.Tokenizer.from_str(json.dumps(d))


def test_smollm2_metadata_loads(smol, smol_meta):
    assert smol.vocab_size == len(smol_meta["tokenizer.ggml.tokens"]) == 49152
    assert len(smol.merges) == 48900 and smol.rule == "rank" and not smol.ignore_merges
    assert sum(i is None for i in smol.byte_ids) == 21  # 0x04, 0x06, ..., 0xF1, 0xF5..0xFF
    assert smol.special_tokens["<|im_start|>"] == 1 and smol.bos_id == 1 and smol.eos_id == 2
    assert not smol.add_bos and smol.fast_engine.name == "tiktoken"


@pytest.mark.parametrize("text", REAL_TEXTS)
def test_smollm2_ids_equal_transformers_gguf_loader(smol, smol_transformers, text):
    hf, _ = smol_transformers
    theirs = hf(text, add_special_tokens=False).input_ids
    if SPLITS_DIFFER.search(text):
        assert smol.encode(text) != theirs  # the documented difference, shown to exist
    else:
        assert smol.encode(text) == theirs
        assert smol.encode(text, add_special_tokens=True) == hf(text).input_ids


@pytest.mark.parametrize("text", REAL_TEXTS)
def test_smollm2_ids_equal_its_own_pretokenizer(smol, smol_original, text):
    assert smol.encode(text) == smol_original.encode(text, add_special_tokens=False).ids
    assert smol.encode(text) == smol.encode(text, engine="reference")


def test_smollm2_digits_after_spaces_follow_llama_cpp(smol, smol_transformers):
    """llama.cpp (llama-cpp-python 0.3.36 on this file) gives these ids; transformers' GGUF
    loader, which splits "  1" as " " + " 1", gives [216, 216, 33]."""
    hf, _ = smol_transformers
    assert smol.encode("Hello world! 123  1") == [19556, 905, 17, 216, 33, 34, 35, 256, 33]
    assert hf("  1", add_special_tokens=False).input_ids == [216, 216, 33]


@settings(max_examples=150, deadline=None)
@given(assigned)
def test_smollm2_equals_its_own_pretokenizer_on_any_text(smol, smol_original, text):
    ours = smol.encode(text, allowed_special="all")  # tokenizers always matches specials
    assert ours == smol_original.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", REAL_TEXTS)
def test_smollm2_decodes_what_it_encodes(smol, text):
    kept = bytes(b for b in text.encode() if smol.byte_ids[b] is not None)  # the rest: dropped
    assert smol.decode(smol.encode(text)) == kept.decode("utf-8", "replace")
    assert (kept == text.encode()) == ("\x04" not in text)


def test_smollm2_chat_tokens_follow_our_special_token_rules(smol, smol_transformers):
    hf, _ = smol_transformers
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(SpecialTokenError, match="<|im_start|>"):
        smol.encode(prompt)
    ids = smol.encode(prompt, allowed_special="all")
    assert ids == hf(prompt, add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids.count(2) == 1
    plain = smol.encode_ordinary(prompt)
    assert 1 not in plain and 2 not in plain and smol.decode(plain) == prompt


def test_chat_template_comes_from_the_metadata(smol_meta, smol_transformers):
    hf, _ = smol_transformers
    template = chat_template_from_gguf(smol_meta)
    assert template == hf.chat_template and "<|im_start|>" in template
    assert chat_template_from_gguf({}) is None


# ---- small vocabularies written with the gguf writer ----------------------------------
CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3, "don't stop 12345 987654321",
          "naïve café 你好 世界 🙂🙂", "def f(x):\n    return x\n\n\n  ", "HELLO'S World's"]


def _train(pattern: str, ignore_merges: bool):
    """A small HF byte-level BPE with this split regex, trained on CORPUS."""
    from tokenizers import Regex, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin|>", "<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(CORPUS * 5, trainer)
    return hf


def _write_gguf(hf, pre: str, tmp_path, extra=None):
    """A vocabulary-only GGUF file of a trained HF tokenizer, read back as metadata."""
    d = json.loads(hf.to_str())
    vocab = {**d["model"]["vocab"], **{t["content"]: t["id"] for t in d["added_tokens"]}}
    tokens = [s for s, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {t["content"] for t in d["added_tokens"]}
    writer = gguf.GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m
                             for m in d["model"]["merges"]])
    writer.add_bos_token_id(vocab["<|begin|>"])
    writer.add_eos_token_id(vocab["<|end|>"])
    for key, value in (extra or {}).items():
        writer.add_bool(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(tmp_path / "vocab.gguf"))
    return {k: f.contents() for k, f in reader.fields.items()}


@pytest.mark.parametrize("pre, pattern, ignore_merges", [
    ("llama-bpe", LLAMA3_PATTERN, True), ("qwen2", QWEN2_PATTERN, False),
])
def test_small_gguf_vocabularies_equal_tokenizers(pre, pattern, ignore_merges, tmp_path):
    hf = _train(pattern, ignore_merges)
    meta = _write_gguf(hf, pre, tmp_path)
    ours = tokenizer_from_gguf(meta)
    assert ours.ignore_merges == ignore_merges
    assert ours.add_bos == (pre == "llama-bpe")  # llama.cpp's default when the key is absent
    for text in CORPUS + REAL_TEXTS:
        assert ours.encode(text, allowed_special="all") == hf.encode(text).ids, text
    with_bos = [hf.token_to_id("<|begin|>")] * (pre == "llama-bpe") + hf.encode("hi").ids
    assert ours.encode("hi", add_special_tokens=True) == with_bos


def test_add_bos_key_overrides_the_default(tmp_path):
    meta = _write_gguf(_train(LLAMA3_PATTERN, True), "llama-bpe", tmp_path,
                       {"tokenizer.ggml.add_bos_token": False})
    assert not tokenizer_from_gguf(meta).add_bos


def _smol_like(**changes):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": [to_str(bytes([b])) for b in range(256)] + ["ab", "<s>"],
            "tokenizer.ggml.token_type": [1] * 257 + [3],
            "tokenizer.ggml.merges": ["a b"]}
    meta.update(changes)
    return meta


def test_a_hand_made_vocabulary_loads():
    tok = tokenizer_from_gguf(_smol_like())
    assert tok.encode("abab") == [256, 256] and tok.special_tokens == {"<s>": 257}


@pytest.mark.parametrize("changes, message", [
    ({"tokenizer.ggml.model": "llama"}, "not SentencePiece"),
    ({"tokenizer.ggml.model": "bert"}, "'bert'"),
    ({"tokenizer.ggml.pre": "superbpe"}, "'superbpe', a pre-tokenizer lmstack does not know"),
    ({"tokenizer.ggml.pre": None}, "'default'"),
    ({"tokenizer.ggml.add_space_prefix": True}, "add_space_prefix"),
    ({"tokenizer.ggml.merges": None}, "lacks tokenizer.ggml.merges"),
    ({"tokenizer.ggml.merges": ["a c"]}, "merge 0 'a c'"),
    ({"tokenizer.ggml.merges": ["ab"]}, "merge 0 'ab'"),
    ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
    ({"tokenizer.ggml.token_type": [6] * 258}, "type 6"),
])
def test_unrepresentable_metadata_is_refused_by_name(changes, message):
    with pytest.raises(TokenizerError, match=regex.escape(message)):
        tokenizer_from_gguf(_smol_like(**changes))
