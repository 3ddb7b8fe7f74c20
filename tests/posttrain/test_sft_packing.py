"""The issue's packing test: chats rendered and tokenized by sft_data.py, packed several to a
row, give through `sft_loss` the same summed loss and the same gradients as each chat alone in
its own row (float64; RoPE, GQA, SwiGLU — the Llama family SmolLM2 is)."""

from __future__ import annotations

import torch

from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.sft import sft_loss
from lmstack.posttrain.sft_data import collate, pack, tokenize_record
from lmstack.tokenizer.chat_template import ChatTemplate

CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Green, like grass."}],
    [{"role": "user", "content": "def f(x):"}, {"role": "assistant", "content": "    return x * 2"}],
]


def test_packed_loss_and_gradients_equal_unpacked(tok):
    examples = [tokenize_record({"messages": m}, tok, ChatTemplate()) for m in CHATS]
    max_len = sum(len(e.ids) for e in examples) + 4
    rows = pack(examples, max_len)
    assert len(rows) == 1  # all three in one row
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=max_len, n_layer=2, n_head=4,
                          n_kv_head=2, n_embd=32, position="rope", norm="rmsnorm", mlp="swiglu",
                          bias=False, dropout=0.0)).double()

    def loss_and_grads(batches):
        model.zero_grad()
        total, count = 0, 0
        for batch in batches:
            loss, n = sft_loss(model, batch)
            total, count = total + loss, count + n
        (total / count).backward()
        return float(total), count, [p.grad.clone() for p in model.parameters()]

    packed = loss_and_grads([collate(rows, max_len)])
    alone = loss_and_grads([collate(pack([e], max_len), max_len) for e in examples])
    assert packed[1] == alone[1] == sum(sum(e.trained[1:]) for e in examples)
    assert abs(packed[0] - alone[0]) < 1e-9, (packed[0], alone[0])
    for a, b in zip(packed[2], alone[2]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
