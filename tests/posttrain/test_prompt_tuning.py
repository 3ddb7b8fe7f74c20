"""Prompt tuning (lmstack/posttrain/peft/prompt_tuning.py): the soft prompt is the model's
prefix (checked against the written-out embedding concatenation), a packed row of chats scores
exactly what each chat scores alone behind the prompt (loss and the prompt's gradient), only
the prompt trains, save/load round trip, Hugging Face PEFT's PROMPT_TUNING both ways, and bad
input."""

from __future__ import annotations

import json

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.peft import (
    PromptTuningConfig,
    PromptTuningModel,
    apply_prompt_tuning,
    load_prompt_tuning,
    save_prompt_tuning,
    trainable_summary,
)
from lmstack.posttrain.peft.prompt_tuning import packed_with_prompts
from lmstack.posttrain.sft import sft_loss
from lmstack.posttrain.sft_data import collate, pack, tokenize_record
from lmstack.tokenizer.chat_template import ChatTemplate

from .test_sft_packing import CHATS

V = 96
LLAMA = {"vocab_size": V, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32,
         "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False,
         "intermediate_size": 48}
GPT2 = {**LLAMA, "n_kv_head": None, "position": "learned", "norm": "layernorm", "mlp": "gelu",
        "bias": True, "tie_embeddings": True, "intermediate_size": None}


def gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_the_prompt_is_a_prefix_of_the_input_embeddings(arch):
    model, x = gpt(**arch), ids()
    table = model.wte.weight.detach().clone()
    tuned = apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=5, init="random"))
    prompt = tuned.prompt_embeddings
    assert prompt.shape == (5, 32) and prompt.abs().max() <= 0.5
    emb = tuned.model.wte(torch.cat([tuned.virtual_ids(2, x.device), x], 1))  # (2, 5 + 12, 32)
    torch.testing.assert_close(emb, torch.cat([prompt.expand(2, 5, 32), table[x]], 1), atol=0, rtol=0)
    logits = tuned(x)
    assert logits.shape == (2, 12, V)
    # the same as the model's own last positions of the prompt-extended ids
    full = tuned.model(torch.cat([tuned.virtual_ids(2, x.device), x], 1))
    torch.testing.assert_close(logits, full[:, 5:], atol=0, rtol=0)
    assert not torch.allclose(logits, gpt(**arch)(x), atol=1e-3)  # the prompt changes the logits
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == ["model.wte.prompt_embeddings"]
    assert trainable_summary(tuned).trainable == 5 * 32
    if arch["tie_embeddings"]:
        assert tuned.model.lm_head.weight is tuned.model.wte.weight  # still tied


def test_vocab_init_copies_token_embeddings():
    model = gpt()
    tuned = apply_prompt_tuning(model, PromptTuningConfig(num_virtual_tokens=3, init="vocab", seed=4))
    rows = tuned.prompt_embeddings.detach()
    table = tuned.model.wte.weight
    assert all(bool((table == r).all(1).any()) for r in rows)


def test_packing_layout():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    pos = torch.tensor([[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    idx = torch.tensor([[10, 11, 20, 21, 22, 0], [30, 31, 32, 33, 34, 35]])
    out_ids, out_seg, out_pos, real = packed_with_prompts(idx, seg, pos, torch.tensor([90, 91]))
    assert out_ids.tolist() == [[90, 91, 10, 11, 90, 91, 20, 21, 22, 0], [90, 91, 30, 31, 32, 33, 34, 35, 0, 0]]
    assert out_seg.tolist() == [[1, 1, 1, 1, 2, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]
    assert out_pos.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 2], [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]]
    assert out_ids[real].view(2, 6).tolist() == idx.tolist()


def test_packed_row_scores_each_example_as_alone_behind_the_prompt(tok):
    examples = [tokenize_record({"messages": m}, tok, ChatTemplate()) for m in CHATS]
    max_len = sum(len(e.ids) for e in examples) + 4
    rows = pack(examples, max_len)
    assert len(rows) == 1
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=max_len + 8, n_layer=2, n_head=4, n_kv_head=2,
                         n_embd=32, position="rope", norm="rmsnorm", mlp="swiglu", bias=False)).double()
    model = apply_prompt_tuning(base, PromptTuningConfig(num_virtual_tokens=6, init="random"))

    def loss_and_grad(batches):
        model.zero_grad()
        total, count = 0, 0
        for batch in batches:
            loss, n = sft_loss(model, batch)
            total, count = total + loss, count + n
        (total / count).backward()
        return float(total.detach()), count, model.prompt_embeddings.grad.clone()

    packed = loss_and_grad([collate(rows, max_len)])
    alone = loss_and_grad([collate(pack([e], max_len), max_len) for e in examples])
    assert packed[1] == alone[1]
    assert abs(packed[0] - alone[0]) < 1e-9, (packed[0], alone[0])
    torch.testing.assert_close(packed[2], alone[2], atol=1e-10, rtol=0)
    assert packed[2].abs().max() > 1e-4  # the prompt is trained
    # an example alone, unpacked (the plain path: no segment ids), gives the same logits
    inputs, _, positions, segments = collate(pack([examples[1]], max_len), max_len)
    n_real = int((segments > 0).sum())
    packed_alone = model(inputs, segment_ids=segments, position_ids=positions)[:, :n_real]
    torch.testing.assert_close(model(inputs[:, :n_real]), packed_alone, atol=1e-10, rtol=0)
    # negative control: one prompt for the whole row (not per example) scores differently
    ids_, _, pos_, seg_ = collate(rows, max_len)
    one = model(ids_, segment_ids=torch.where(seg_ > 0, 1, 0), position_ids=torch.arange(max_len)[None])
    assert not torch.allclose(one, model(ids_, segment_ids=seg_, position_ids=pos_), atol=1e-3)


def test_training_moves_the_prompt_only_and_round_trips(tmp_path):
    model, x = apply_prompt_tuning(gpt(), PromptTuningConfig(num_virtual_tokens=4)), ids()
    base = {k: v.clone() for k, v in model.state_dict().items() if "prompt" not in k}
    start = model.prompt_embeddings.detach().clone()
    opt = torch.optim.AdamW([model.prompt_embeddings], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.prompt_embeddings, start)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())
    expected = model(x)
    save_prompt_tuning(model, tmp_path / "pt", base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "pt/adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"], config["token_dim"], config["num_layers"]) == \
        ("PROMPT_TUNING", 4, 32, 2)
    again = load_prompt_tuning(gpt(), tmp_path / "pt")
    assert isinstance(again, PromptTuningModel)
    torch.testing.assert_close(again(x), expected, atol=0, rtol=0)


def test_kv_cache_decoding_matches_the_full_forward():
    model, x = apply_prompt_tuning(gpt(), PromptTuningConfig(num_virtual_tokens=3)), ids()
    full = model(x)
    cache = model.new_cache(2, 16)
    first = model(x[:, :8], cache=cache)
    steps = [model(x[:, t:t + 1], cache=cache) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, atol=1e-5, rtol=0)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer"):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ConfigError, match="init 'text' is unknown"):
        PromptTuningConfig(init="text")
    tuned = apply_prompt_tuning(gpt(), PromptTuningConfig(num_virtual_tokens=4))
    with pytest.raises(ConfigError, match="already has a soft prompt"):
        apply_prompt_tuning(tuned)
    with pytest.raises(ConfigError, match="needs a GPT"):
        apply_prompt_tuning(torch.nn.Linear(3, 3))
    save_prompt_tuning(tuned, tmp_path / "pt")
    with pytest.raises(ConfigError, match="another base: its token_dim is 32, this model's 64"):
        load_prompt_tuning(gpt(n_embd=64), tmp_path / "pt")
    with pytest.raises(ConfigError, match="another base: its num_layers is 2, this model's 1"):
        load_prompt_tuning(gpt(n_layer=1), tmp_path / "pt")
    with pytest.raises(ConfigError, match="sequence length .* exceeds block_size"):
        tuned(torch.zeros(1, 62, dtype=torch.long))  # 4 + 62 > 64


# ---- Hugging Face PEFT, both ways ---------------------------------------------------------------

def hf_llama(tmp_path):
    from lmstack.interop import load_hf_model
    transformers, peft = pytest.importorskip("transformers"), pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    theirs = transformers.LlamaForCausalLM(cfg).eval()
    theirs.save_pretrained(tmp_path / "hf")
    return peft, theirs, load_hf_model(tmp_path / "hf")


def test_our_prompt_loads_in_peft_with_the_same_logits(tmp_path):
    peft, theirs, ours = hf_llama(tmp_path)
    x = ids()
    tuned = apply_prompt_tuning(ours, PromptTuningConfig(num_virtual_tokens=5))
    save_prompt_tuning(tuned, tmp_path / "pt", base_model_name_or_path=str(tmp_path / "hf"))
    with torch.no_grad():
        base = theirs(x).logits
        peft_model = peft.PeftModel.from_pretrained(theirs, tmp_path / "pt").eval()
        expected = peft_model(input_ids=x).logits[:, 5:]
        torch.testing.assert_close(tuned(x), expected, atol=1e-4, rtol=0)
    assert (expected - base).abs().max() > 1e-2  # negative control: PEFT did prepend the prompt


def test_peft_prompt_loads_here_with_the_same_logits(tmp_path):
    peft, theirs, ours = hf_llama(tmp_path)
    x = ids()
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7)
    peft_model = peft.get_peft_model(theirs, config)
    with torch.no_grad():
        emb = peft_model.prompt_encoder["default"].embedding.weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
    peft_model.save_pretrained(tmp_path / "pt")
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=x).logits[:, 7:]
        base = ours(x)
        tuned = load_prompt_tuning(ours, tmp_path / "pt")
        torch.testing.assert_close(tuned(x), expected, atol=1e-4, rtol=0)
        assert (tuned(x) - base).abs().max() > 1e-2  # negative control


def test_engine_decodes_behind_the_prompt():
    """The SFT sampler's path: Engine greedy decoding equals greedy by the full forward."""
    from lmstack.infer import Engine
    model = apply_prompt_tuning(gpt(), PromptTuningConfig(num_virtual_tokens=4, init="random"))
    prompt = [5, 6, 7, 8]
    out = Engine(model).generate(prompt, temperature=0, max_new_tokens=6, ignore_eos=True)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out.tokens == seq[4:]
    assert out.tokens != Engine(gpt()).generate(prompt, temperature=0, max_new_tokens=6, ignore_eos=True).tokens
