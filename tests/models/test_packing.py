"""A packed row (several examples one after another, as fine-tuning packs them) computes, for
each example, exactly what the example computes alone: the same logits, and the same gradients
of the summed loss — with RoPE, learned positions and ALiBi, grouped-query attention and a
sliding window. A negative control: without the segment mask the examples see each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmstack.models import GPT, GPTConfig

LENGTHS = (5, 7, 3)
PAD = 1  # one padding token at the end of the row: segment 0


def packed(examples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, segment ids, positions), each (1, T): the examples in a row, then padding."""
    ids = torch.cat([*examples, torch.zeros(PAD, dtype=torch.long)])
    seg = torch.cat([torch.full((len(e),), i + 1) for i, e in enumerate(examples)] + [torch.zeros(PAD, dtype=torch.long)])
    pos = torch.cat([torch.arange(len(e)) for e in examples] + [torch.arange(PAD)])
    return ids[None], seg[None], pos[None]


def model_of(**settings) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **settings})).double()


SETTINGS = [dict(position="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu"),
            dict(position="learned"), dict(position="alibi"),
            dict(position="rope", sliding_window=4)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_a_packed_row_equals_its_examples_alone(settings):
    model = model_of(**settings)
    g = torch.Generator().manual_seed(1)
    examples = [torch.randint(0, 50, (n,), generator=g) for n in LENGTHS]
    ids, seg, pos = packed(examples)
    logits = model(ids, segment_ids=seg, position_ids=pos)[0]
    start = 0
    for e in examples:
        alone = model(e[None])[0]
        torch.testing.assert_close(logits[start:start + len(e)], alone, atol=1e-10, rtol=0)
        start += len(e)

    def loss(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out[:-1], targets[1:], reduction="sum")

    model.zero_grad()
    total, start = 0, 0
    for e in examples:
        total = total + loss(logits[start:start + len(e)], e)
        start += len(e)
    total.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sum(loss(model(e[None])[0], e) for e in examples).backward()
    for a, (name, p) in zip(packed_grads, model.named_parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-10, rtol=0, msg=name)


def test_without_segments_the_examples_see_each_other():
    model = model_of(position="rope")
    examples = [torch.arange(5), torch.arange(10, 17)]
    ids, seg, pos = packed(examples)
    leaky = model(ids)[0, 5:12]  # one causal sequence: the second example sees the first
    assert not torch.allclose(leaky, model(examples[1][None])[0], atol=1e-6)
    with pytest.raises(Exception, match="shape"):
        model(ids, segment_ids=seg[:, :3])
