"""GGUF export against the `gguf` package's reader, transformers' GGUF loader and, where it is
installed, llama.cpp itself (llama-cpp-python). Models and tokenizers are built in the test."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from lmstack.errors import ConfigError, TokenizerError
from lmstack.interop.gguf_export import build_gguf, export_gguf, rope_freq_factors, rope_permute
from lmstack.interop.gguf_file import read_gguf
from lmstack.interop.gguf_vocab_export import unreachable_tokens
from lmstack.interop.gguf_writer import (FLOAT64, INT32, UINT8, UINT64, TensorEntry, Value, array,
                                         boolean, f32, string, u32, write_gguf)
from lmstack.models.directory import save_model
from lmstack.models.gpt import GPT, GPTConfig
from lmstack.tokenizer import Tokenizer, train_bpe
from lmstack.tokenizer.gguf_vocab import tokenizer_from_gguf
from lmstack.tokenizer.patterns import GPT2_PATTERN
from tests.interop.test_gguf_quantize import error_bound

CORPUS = ["The quick brown fox jumps over the lazy dog. 12345 numbers!\n\nNew lines  and   spaces.",
          "def f(x):\n    return x * 2  # it's code\n\tindented\r\n",
          "Émile a mangé 3 croissants; naïve café — 東京 😀 Straße ÀÉÎ"] * 20
SAMPLES = ["Hello world, it's 2024!\n\n  spaced   out\tTabs\n",
           "Émile's café: 東京タワー 😀👍🏽 naïve", "for i in range(10):\n    print(i ** 2)  # 0 1 4\n",
           "The lazy dog jumps over 1234567 foxes."]
QTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]
BASE = dict(block_size=64, n_layer=2, n_head=4, n_embd=64, init_std=0.2)
LLAMA = dict(BASE, n_kv_head=2, position="rope", rope_theta=50000.0, norm="rmsnorm", norm_eps=1e-5,
             mlp="swiglu", intermediate_size=128, bias=False, tie_embeddings=False)
QWEN2 = dict(LLAMA, qkv_bias=True, tie_embeddings=True)
LLAMA3 = dict(LLAMA, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
LINEAR = dict(LLAMA, rope_scaling={"rope_type": "linear", "factor": 4.0})
GPT2 = dict(BASE, block_size=1024, position="learned", norm="layernorm", mlp="gelu", bias=True)
# transformers' GGUF loader reads gpt2's context_length into n_ctx, not n_positions, so only a
# 1024-position GPT-2 loads there (llama.cpp reads any); hence GPT2's block_size.


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the corpus is small for this vocabulary size"
        return {p: train_bpe(CORPUS, vocab_size=400, pattern=p, progress=False) for p in ("gpt4", "gpt2")}


def make_model(settings: dict, vocab_size: int = 416, seed: int = 0) -> GPT:
    """A random GPT whose biases are not zero (a zero bias hides a misplaced one)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **settings)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def model_dir(tmp: Path, model: GPT, tok: Tokenizer) -> Path:
    d = tmp / "model"
    save_model(d, model)
    tok.save(d / "tokenizer.json")
    return d


def read_tensors(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """name -> (float values in numpy shape, raw bytes, type name), read with the gguf package."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        kind = GGMLQuantizationType(t.tensor_type)
        out[t.name] = (gguf_dequantize(t.data, kind).reshape(shape), np.asarray(t.data), kind.name)
    return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of rope_permute: adjacent pairs back to rotate-half halves."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_names(model: GPT) -> dict[str, str]:
    """llama.cpp's name -> our state-dict key, for a llama/qwen2 model."""
    names = {"ln_1": "attn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k",
             "attn.v_proj": "attn_v", "attn.o_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {"token_embd.weight": "wte.weight", "output_norm.weight": "ln_f.weight"}
    if not model.config.tie_embeddings:
        out["output.weight"] = "lm_head.weight"
    for key in model.state_dict():
        parts = key.split(".")
        if parts[0] == "layers":
            out[f"blk.{parts[1]}.{names['.'.join(parts[2:-1])]}.{parts[-1]}"] = key
    return out


def ours_by_gguf_name(model: GPT) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names, Q/K rows as we hold them."""
    sd = model.state_dict()
    return {name: sd[key].detach().numpy() for name, key in gguf_names(model).items()}


HEADS = {"attn_q": LLAMA["n_head"], "attn_k": LLAMA["n_kv_head"]}


def reference_model(path: Path, cfg: GPTConfig) -> GPT:
    """Our GPT holding exactly the weights a llama/qwen2 file stores, as gguf-py decodes them."""
    stored = read_tensors(path)
    permuted = read_gguf(path).metadata["general.architecture"] == "llama"
    model = GPT(cfg).eval()
    state = {}
    for name, key in gguf_names(model).items():
        values, role = stored[name][0], name.split(".")[-2]
        state[key] = torch.from_numpy(unpermute(values, HEADS[role]) if permuted and role in HEADS
                                      else values.copy())
    model.load_state_dict(state, strict=False)  # a tied lm_head is wte
    return model


# ---- the file, read back ----------------------------------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES)
def test_every_tensor_reads_back_within_its_types_error(tmp_path, tokenizers, qtype):
    model = make_model(LLAMA)
    path = export_gguf(model_dir(tmp_path, model, tokenizers["gpt4"]), tmp_path / "m.gguf", qtype)
    stored = read_tensors(path)
    expected = ours_by_gguf_name(model)
    assert set(stored) == set(expected)
    for name, ours in expected.items():
        values, raw, kind = stored[name]
        want_type = "F32" if ours.ndim == 1 else qtype.upper()
        assert kind == want_type, name
        role = name.split(".")[-2]
        if role in HEADS:  # the bytes are llama.cpp's own quantization of the permuted rows
            permuted = rope_permute(torch.from_numpy(ours), HEADS[role]).numpy()
            ref = gguf_quantize(permuted, GGMLQuantizationType[kind])
            np.testing.assert_array_equal(raw.view(np.uint8).ravel(), ref.view(np.uint8).ravel())
            values = unpermute(values, HEADS[role])
        assert (np.abs(values - ours) <= error_bound(ours, kind)).all(), name


def test_metadata_names_the_network(tmp_path, tokenizers):
    model = make_model(LLAMA)
    f = read_gguf(export_gguf(model_dir(tmp_path, model, tokenizers["gpt4"]), tmp_path / "m.gguf", "q8_0"))
    m = f.metadata
    assert (m["general.architecture"], m["general.file_type"], m["general.quantization_version"]) == ("llama", 7, 2)
    assert {k: m[f"llama.{k}"] for k in ("context_length", "embedding_length", "block_count",
                                         "feed_forward_length", "attention.head_count",
                                         "attention.head_count_kv", "rope.dimension_count",
                                         "vocab_size")} == {
        "context_length": 64, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
        "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16,
        "vocab_size": 416}
    assert m["llama.rope.freq_base"] == 50000.0
    assert m["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    types = GGUFReader(f.path).fields["llama.block_count"].types
    assert types == [GGUFValueType.UINT32]  # llama.cpp refuses a count of another type
    tokens, kinds = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"]
    eot = tokenizers["gpt4"].special_tokens["<|endoftext|>"]
    assert len(tokens) == 416 and tokens[eot] == "<|endoftext|>" and kinds[eot] == 3
    assert tokens[-1] == "[PAD415]" and kinds[-1] == 5 and tokens[ord(" ")] == "Ġ"
    assert m["tokenizer.ggml.pre"] == "llama-bpe" and m["tokenizer.ggml.eos_token_id"] == eot
    assert m["tokenizer.ggml.add_bos_token"] is False


# ---- transformers' GGUF loader ----------------------------------------------------------------

def hf_logits(path: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return hf.eval()(torch.tensor([ids])).logits[0]


def our_logits(model: GPT, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


@pytest.mark.parametrize("settings,arch", [(LLAMA, "llama"), (QWEN2, "qwen2"), (GPT2, "gpt2")])
def test_transformers_loads_the_f32_file_with_our_logits(tmp_path, tokenizers, settings, arch):
    tok = tokenizers["gpt4"]
    model = make_model(settings)
    path = export_gguf(model_dir(tmp_path, model, tok), tmp_path / "gguf" / "m.gguf", "f32")
    assert read_gguf(path).metadata["general.architecture"] == arch
    assert ("output.weight" in read_gguf(path).tensors) == (not model.config.tie_embeddings)
    ids = tok.encode(SAMPLES[0])[:48]
    torch.testing.assert_close(hf_logits(path, ids), our_logits(model, ids), atol=1e-4, rtol=0)


def test_without_the_permutation_the_logits_differ(tmp_path, tokenizers):
    """Negative control: the same file with Q/K rows as they are (the bug the permutation
    prevents) loads, and computes something else."""
    tok, model = tokenizers["gpt4"], make_model(LLAMA)
    metadata, tensors = build_gguf(model, tok, "f32", permute=False)
    path = write_gguf(tmp_path / "gguf" / "unpermuted.gguf", metadata, tensors)
    ids = tok.encode(SAMPLES[0])[:48]
    assert (hf_logits(path, ids) - our_logits(model, ids)).abs().max() > 0.05


def test_transformers_reads_the_quantized_blocks_where_we_put_them(tmp_path, tokenizers):
    """A Q4_1 file's logits equal our model holding exactly the weights the file stores."""
    tok, model = tokenizers["gpt4"], make_model(LLAMA)
    path = export_gguf(model_dir(tmp_path, model, tok), tmp_path / "gguf" / "m.gguf", "q4_1")
    ids = tok.encode(SAMPLES[2])[:48]
    stored = reference_model(path, model.config)
    torch.testing.assert_close(hf_logits(path, ids), our_logits(stored, ids), atol=1e-4, rtol=0)
    assert (our_logits(stored, ids) - our_logits(model, ids)).abs().max() > 1e-3  # it is lossy


# ---- the tokenizer ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,pre", [("gpt4", "llama-bpe"), ("gpt2", "gpt-2")])
def test_tokenizer_round_trips_through_transformers_and_our_reader(tmp_path, tokenizers, pattern, pre):
    from transformers import AutoTokenizer

    tok = tokenizers[pattern]
    path = export_gguf(model_dir(tmp_path, make_model(LLAMA), tok), tmp_path / "gguf" / "m.gguf", "q8_0")
    meta = read_gguf(path).metadata
    assert meta["tokenizer.ggml.pre"] == pre
    hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    back = tokenizer_from_gguf(meta)
    for text in SAMPLES + CORPUS[:3]:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert back.encode(text) == ids, text
        assert hf.decode(ids) == text
    marked = "one<|endoftext|>two"
    assert hf.encode(marked, add_special_tokens=False) == tok.encode(marked, allowed_special="all")


def test_a_split_pattern_llama_cpp_does_not_know_is_refused(tmp_path):
    tok = train_bpe(CORPUS, vocab_size=300, pattern=r"\S+|\s+", progress=False)
    with pytest.raises(TokenizerError, match="no llama.cpp pre-tokenizer name"):
        export_gguf(model_dir(tmp_path, make_model(LLAMA, vocab_size=300), tok), tmp_path / "m.gguf")


# ---- what is refused, and what falls back ------------------------------------------------------

@pytest.mark.parametrize("change,match", [
    (dict(GPT2, mlp="relu"), "GELU"),
    (dict(LLAMA, sliding_window=16), "sliding_window=16"),
    (dict(LLAMA, qk_norm=True), "qk_norm"),
    (dict(LLAMA, position="alibi"), "position=alibi"),
    (dict(QWEN2, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
     "llama3"),
])
def test_architectures_llama_cpp_would_run_differently_are_refused(tmp_path, tokenizers, change, match):
    d = model_dir(tmp_path, make_model(change), tokenizers["gpt4"])
    with pytest.raises(ConfigError, match=match):
        export_gguf(d, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_bad_requests_are_one_line_errors(tmp_path, tokenizers):
    d = model_dir(tmp_path, make_model(LLAMA), tokenizers["gpt4"])
    with pytest.raises(ConfigError, match="'q5_k' is not a GGUF type"):
        export_gguf(d, tmp_path / "m.gguf", "q5_k")
    with pytest.raises(ConfigError, match="is a directory"):
        export_gguf(d, tmp_path, "f16")
    small = model_dir(tmp_path / "small", make_model(LLAMA, vocab_size=300), tokenizers["gpt4"])
    with pytest.raises(TokenizerError, match="embedding only 300"):
        export_gguf(small, tmp_path / "m.gguf")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        export_gguf(d, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


def test_rows_not_a_multiple_of_32_fall_back_to_f16(tmp_path, tokenizers):
    model = make_model(dict(LLAMA, n_embd=48, n_head=4, n_kv_head=2, intermediate_size=96))
    with pytest.warns(UserWarning, match="written F16 instead of Q4_0"):
        path = export_gguf(model_dir(tmp_path, model, tokenizers["gpt4"]), tmp_path / "m.gguf", "q4_0")
    kinds = {name: kind for name, (_, _, kind) in read_tensors(path).items()}
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert kinds["blk.0.ffn_down.weight"] == "Q4_0"  # its rows are 96 long


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path, tokenizers):
    model = make_model(LLAMA3)
    path = export_gguf(model_dir(tmp_path, model, tokenizers["gpt4"]), tmp_path / "m.gguf", "f16")
    freqs = read_tensors(path)["rope_freqs.weight"][0]
    np.testing.assert_array_equal(freqs, rope_freq_factors(model.config).numpy())
    assert freqs.shape == (8,) and freqs[-1] == 8.0 and (np.diff(freqs) >= 0).all()
    assert "llama.rope.scaling.type" not in read_gguf(path).metadata  # the tensor says it all


# ---- the writer ---------------------------------------------------------------------------------

def test_writer_types_alignment_and_atomicity(tmp_path):
    metadata: dict[str, Value] = {
        "general.alignment": u32(64), "a.u8": Value(UINT8, 7), "a.f32": f32(0.5),
        "a.f64": Value(FLOAT64, 1e-300), "a.u64": Value(UINT64, 2**40), "a.bool": boolean(True),
        "a.str": string("naïve 😀"), "a.ints": array(INT32, [-1, 2]),
        "a.strs": array(8, ["x", "", "ü"]), "a.empty": array(INT32, [])}
    data = [np.arange(n, dtype="<f4") for n in (3, 5)]
    tensors = [TensorEntry(f"t{i}", (len(d),), "F32", lambda d=d: d.view(np.uint8))
               for i, d in enumerate(data)]
    path = write_gguf(tmp_path / "x.gguf", metadata, tensors)
    r = GGUFReader(path)
    assert r.fields["a.u64"].types == [GGUFValueType.UINT64]
    assert r.fields["a.f64"].parts[-1][0] == 1e-300
    assert [bytes(r.fields["a.strs"].parts[i]).decode() for i in r.fields["a.strs"].data] == ["x", "", "ü"]
    f = read_gguf(path)
    assert f.metadata["a.str"] == "naïve 😀" and f.metadata["a.ints"] == [-1, 2]
    assert all(t.offset % 64 == 0 for t in f.tensors.values())
    assert f.raw("t1").view("<f4").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]

    def broken() -> np.ndarray:
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        write_gguf(tmp_path / "y.gguf", metadata, [*tensors, TensorEntry("z", (1,), "F32", broken)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]  # no file, no temp file


# ---- llama.cpp itself (a peer, not a dependency: skipped when it is not installed) ------------

def llama_cpp_greedy(path: Path, ids: list[int], n: int) -> tuple[list[int], list[int]]:
    """(llama.cpp's ids for SAMPLES[0], its n greedy tokens after `ids`), F32 KV cache."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                    "(a benchmark peer, built apart: docs/gguf-export.md)")
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    tokens = llm.tokenize(SAMPLES[0].encode(), add_bos=False, special=False)
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return tokens, out


def our_greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(our_logits(model, out)[-1].argmax()))
    return out[len(ids):]


def memorize(model: GPT, ids: list[int], steps: int = 60) -> GPT:
    """Fit the model to one text, so that its next-token margins (~9 logits) dwarf the error of
    llama.cpp's arithmetic on quantized weights (~0.5: it rounds activations to 8 bits too)."""
    opt = torch.optim.Adam(model.train().parameters(), lr=1e-2)
    x = torch.tensor([ids])
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1])[0], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
@pytest.mark.parametrize("settings", [LLAMA, QWEN2], ids=["llama", "qwen2"])
def test_llama_cpp_runs_the_file_with_our_tokens(tmp_path, tokenizers, qtype, settings):
    tok = tokenizers["gpt4"]
    text = tok.encode(SAMPLES[2])
    model = memorize(make_model(settings), text)
    path = export_gguf(model_dir(tmp_path, model, tok), tmp_path / "m.gguf", qtype)
    tokens, greedy = llama_cpp_greedy(path, text[:12], 12)
    assert tokens == tok.encode(SAMPLES[0])  # llama.cpp's tokenizer gives our ids
    assert greedy == our_greedy(model, text[:12], 12) == text[12:24]


@pytest.mark.parametrize("settings,atol", [(LLAMA3, 1e-3), (LINEAR, 1e-3), (GPT2, 1e-2)],
                         ids=["llama3-rope", "linear-rope", "gpt2"])
def test_llama_cpp_computes_our_logits_from_an_f32_file(tmp_path, tokenizers, settings, atol):
    """What transformers cannot check (it ignores RoPE scaling): llama.cpp's logits are ours, and
    not those of the same weights without the scaling (negative control). GPT-2 runs GELU
    through an fp16 table in llama.cpp, hence its looser tolerance."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    tok, model = tokenizers["gpt4"], make_model(settings)
    path = export_gguf(model_dir(tmp_path, model, tok), tmp_path / "m.gguf", "f32")
    ids = tok.encode(SAMPLES[2])[:40]
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[:len(ids)]))
    torch.testing.assert_close(theirs, our_logits(model, ids), atol=atol, rtol=0)
    if model.config.rope_scaling:
        plain = make_model(dict(settings, rope_scaling=None))
        assert (theirs - our_logits(plain, ids)).abs().max() > 10 * atol


def test_tokens_the_merges_cannot_rebuild_are_found_and_reported(tmp_path):
    """"bc" merges first, so "abcd" (= "ab" + "cd") is never rebuilt from its bytes: our id rule
    takes the whole piece, llama.cpp's 'gpt-2' pre-tokenizer would not. The export says so."""
    a, b, c, d = (ord(ch) for ch in "abcd")
    merges = [(b, c, 256), (a, b, 257), (c, d, 258), (257, 258, 259)]
    tok = Tokenizer(GPT2_PATTERN, merges, {"<|endoftext|>": 260})
    assert unreachable_tokens(tok) == [259] and tok.encode("abcd") == [259]
    with pytest.warns(UserWarning, match=r"1 tokens \(e.g. ids \[259\]\) are not rebuilt"):
        export_gguf(model_dir(tmp_path, make_model(LLAMA, vocab_size=261), tok), tmp_path / "m.gguf")


def test_a_gguf_file_re_exports_in_another_type(tmp_path, tokenizers):
    """A GGUF file is a source too (its Q4_1 matrices read as floats): Q4_1 -> F32 keeps every
    value the first file stores, and the tokenizer and chat template come along."""
    tok, model = tokenizers["gpt4"], make_model(QWEN2)
    d = model_dir(tmp_path, model, tok)
    (d / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    first = export_gguf(d, tmp_path / "a.gguf", "q4_1")
    second = export_gguf(first, tmp_path / "b.gguf", "f32")
    a, b = read_tensors(first), read_tensors(second)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
    meta = read_gguf(second).metadata
    assert meta["tokenizer.chat_template"] == "{{ messages }}" and meta["general.name"] == "a"
    assert tokenizer_from_gguf(meta).encode(SAMPLES[1]) == tok.encode(SAMPLES[1])
