"""Distillation on logits (lmstack/posttrain/distill_loss.py): zero loss and zero gradient when the
teacher is the student, forward/reverse KL against hand values and the T² gradient scaling, GKD's
JSD(β) and its limits (JSD/β -> forward KL as β -> 0, JSD/(1-β) -> reverse KL as β -> 1, with the
other KL as a negative control), untrained positions ignored, the trainer's loss_fn with a frozen
teacher, and a clear error for a teacher with another vocabulary. TRL's GKD loss is the reference
where it is installed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.distill_loss import (
    DIVERGENCES,
    KDConfig,
    check_same_vocab,
    distill_loss,
    forward_kl,
    generalized_jsd,
    kd_loss_fn,
    reverse_kl,
)
from lmstack.tokenizer import GPT2_PATTERN, Tokenizer

torch.set_num_threads(2)
LABELS = torch.tensor([[3, -100, 1, 2], [-100, 0, 4, -100]])


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_teacher_equal_to_student_gives_zero_loss_and_zero_gradient(divergence, temperature):
    logits = torch.randn(2, 4, 7, requires_grad=True)
    loss, n = distill_loss(logits, logits.detach().clone(), LABELS, divergence, temperature, beta=0.3)
    loss.backward()
    assert n == 5
    assert float(loss.detach()) == 0.0   # exactly: M is Q when P is Q
    assert logits.grad.abs().max() < 1e-6


def test_forward_and_reverse_kl_hand_values_with_temperature():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])   # teacher p, student q at T = 2
    teacher, student = 2 * p.log(), 2 * q.log()                     # logits whose softmax(x / 2) is p, q
    labels = torch.tensor([[0]])
    fwd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)   # KL(p ‖ q)
    rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(q ‖ p)
    for name, kl in (("forward_kl", fwd), ("reverse_kl", rev)):
        loss, n = distill_loss(student.view(1, 1, 2), teacher.view(1, 1, 2), labels, name, 2.0)
        assert n == 1 and float(loss) == pytest.approx(4 * kl, rel=1e-5)   # T² · KL


def test_forward_kl_gradient_is_temperature_times_the_probability_gap():
    # d/ds T²·KL(p_T ‖ q_T) = T (softmax(s/T) - softmax(t/T)): the T² keeps the size at T = 1's
    s, t, temp = torch.randn(1, 1, 6, requires_grad=True), torch.randn(1, 1, 6), 4.0
    distill_loss(s, t, torch.tensor([[0]]), "forward_kl", temp)[0].backward()
    want = temp * (torch.softmax(s.detach() / temp, -1) - torch.softmax(t / temp, -1))
    assert torch.allclose(s.grad, want, atol=1e-6)


def test_jsd_limits_are_forward_kl_at_beta_0_and_reverse_kl_at_beta_1():
    g = torch.Generator().manual_seed(0)
    s, t = 2 * torch.randn(5, 8, generator=g, dtype=torch.float64), 2 * torch.randn(5, 8, generator=g, dtype=torch.float64)
    fwd, rev = forward_kl(s, t), reverse_kl(s, t)
    assert ((fwd - rev).abs() > 0.05).all()   # the two KLs differ here, so each limit is a real test
    small, big = 1e-5, 1 - 1e-5
    assert torch.allclose(generalized_jsd(s, t, small) / small, fwd, rtol=1e-3)
    assert torch.allclose(generalized_jsd(s, t, big) / (1 - big), rev, rtol=1e-3)
    assert not torch.allclose(generalized_jsd(s, t, small) / small, rev, rtol=1e-2)   # negative control
    assert generalized_jsd(s, t, small).max() < 1e-3 and generalized_jsd(s, t, big).max() < 1e-3
    assert torch.equal(generalized_jsd(s, t, 0.0), fwd) and torch.equal(generalized_jsd(s, t, 1.0), rev)


def test_jsd_hand_value():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])   # teacher, student
    beta = 0.25
    m = beta * p + (1 - beta) * q
    want = beta * float((p * (p / m).log()).sum()) + (1 - beta) * float((q * (q / m).log()).sum())
    assert float(generalized_jsd(q.log(), p.log(), beta)) == pytest.approx(want, rel=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_jsd_at_one_half_is_symmetric_and_at_most_ln2(seed):
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(4, 6, generator=g), 3 * torch.randn(4, 6, generator=g)
    a, b = generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5)
    assert torch.allclose(a, b, atol=1e-6) and (a <= math.log(2) + 1e-6).all() and (a >= -1e-7).all()


def test_untrained_positions_do_not_count():
    s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    s2 = s.clone()
    s2[LABELS == -100] = 100 * torch.randn(3, 7)   # anything at the untrained positions
    assert torch.equal(distill_loss(s, t, LABELS)[0], distill_loss(s2, t, LABELS)[0])


def test_bad_settings_and_logit_shapes_are_refused():
    s = torch.randn(1, 2, 5)
    with pytest.raises(ConfigError, match="vocabulary"):
        distill_loss(s, torch.randn(1, 2, 6), torch.tensor([[0, 1]]))
    with pytest.raises(ConfigError, match="unknown divergence"):
        distill_loss(s, s, torch.tensor([[0, 1]]), "kl")
    with pytest.raises(ConfigError, match="temperature"):
        distill_loss(s, s, torch.tensor([[0, 1]]), temperature=0)
    with pytest.raises(ConfigError, match="beta"):
        kd_loss_fn(torch.nn.Identity(), KDConfig(divergence="jsd", beta=1.5))


def tiny(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16))


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_kd_loss_fn_trains_the_student_alone(divergence):
    teacher, x = tiny(0).eval(), torch.randint(0, 32, (2, 8))
    y = torch.where(torch.rand(2, 8) > 0.25, torch.randint(0, 32, (2, 8)), -100)
    loss_fn = kd_loss_fn(teacher, KDConfig(divergence=divergence, temperature=2.0))
    same, n = loss_fn(copy.deepcopy(teacher), (x, y))
    assert abs(same.item()) < 1e-5 and n == int((y != -100).sum())
    student = tiny(1)
    loss, _ = loss_fn(student, (x, y))
    loss.backward()
    assert loss.item() > 0.01
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def tokenizer(merges) -> Tokenizer:
    return Tokenizer(GPT2_PATTERN, merges, {"<|endoftext|>": 256 + len(merges)})


def test_same_tokenizer_passes_and_another_is_refused_naming_where_it_differs():
    a = tokenizer([(104, 105, 256), (256, 33, 257)])   # "hi", "hi!"
    check_same_vocab(a, tokenizer([(104, 105, 256), (256, 33, 257)]))
    with pytest.raises(ConfigError, match=r"id 257 is b'hi!' in the teacher, b'hj' in the student"):
        check_same_vocab(a, tokenizer([(104, 105, 256), (104, 106, 257)]))
    with pytest.raises(ConfigError, match="the teacher's vocabulary has 259 tokens, the student's 258"):
        check_same_vocab(a, tokenizer([(104, 105, 256)]))
    with pytest.raises(ConfigError, match="data distillation"):
        check_same_vocab({"a": 0}, {"b": 0})


def test_generalized_jsd_and_its_masked_mean_match_trl():
    pytest.importorskip("trl")
    gkd = pytest.importorskip("trl.experimental.gkd")
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):   # TRL, too, takes the limits at 0 and 1
        theirs = gkd.GKDTrainer.generalized_jsd_loss(s, t, beta=beta, reduction="none").sum(-1)
        assert torch.allclose(generalized_jsd(s, t, beta), theirs, atol=1e-6), beta
        # TRL's token mean over labels != -100 (it applies no T², so compare at T = 1)
        mean = gkd.GKDTrainer.generalized_jsd_loss(s, t, LABELS, beta=beta, reduction="batchmean")
        total, n = distill_loss(s, t, LABELS, "jsd", 1.0, beta)
        assert float(total) / n == pytest.approx(float(mean), rel=1e-5), beta
