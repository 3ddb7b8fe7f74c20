"""RL arithmetic (lmstack/posttrain/rl_math.py): GRPO's group advantages (sum to zero, ties give
zero, skipped samples drop out), the KL estimators (zero at the model itself, k3 unbiased for
KL(π‖π_ref) and not for the other direction), the clipped surrogate (hand values, zero gradient
exactly where PPO clips), GAE against a hand computation and a plain per-row loop, the value loss,
the KL-penalized reward, whitening, and the exact KL of a model to itself."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.rl_math import (
    KL_ESTIMATORS,
    clip_fraction,
    clipped_surrogate,
    gae,
    group_advantages,
    grpo_loss,
    kl_k3,
    kl_penalized_rewards,
    kl_to,
    ppo_policy_loss,
    reduce_loss,
    token_logprobs,
    value_loss,
    whiten,
)

torch.set_num_threads(2)

rewards_groups = st.integers(1, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.lists(st.floats(-10, 10, allow_nan=False), min_size=k, max_size=k),
                         min_size=1, max_size=5)))


@settings(max_examples=200, deadline=None)
@given(rewards_groups, st.booleans())
def test_group_advantages_sum_to_zero_in_each_group(case, scale):
    k, groups = case
    adv = group_advantages(torch.tensor(groups, dtype=torch.float64).view(-1), k, scale_by_std=scale)
    sums = adv.view(-1, k).sum(1)
    assert torch.allclose(sums, torch.zeros_like(sums), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(rewards_groups, st.data())
def test_group_advantages_of_valid_samples_sum_to_zero_and_skipped_get_none(case, data):
    k, groups = case
    rewards = torch.tensor(groups, dtype=torch.float64).view(-1)
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rewards.numel(),
                                            max_size=rewards.numel())))
    rewards = torch.where(valid, rewards, torch.nan)  # a skipped sample's reward is meaningless
    adv = group_advantages(rewards, k, valid=valid)
    assert not adv.isnan().any()
    assert (adv[~valid] == 0).all()
    assert torch.allclose(adv.view(-1, k).sum(1), torch.zeros(len(groups), dtype=torch.float64),
                          atol=1e-9)


def test_group_advantages_hand_values_and_ties():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3]), k=4)
    # group 1: mean 1/4, squared deviations sum to 3/4, unbiased std sqrt(3/4 / 3) = 0.5
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert (adv[4:] == 0).all()   # a tied group (0.3 is not exact in binary) gives exactly 0
    mean_only = group_advantages(torch.tensor([3.0, 1.0]), k=2, scale_by_std=False)  # Dr. GRPO
    assert mean_only.tolist() == [1.0, -1.0]
    one_valid = group_advantages(torch.tensor([5.0, 1.0]), k=2, valid=torch.tensor([True, False]))
    assert one_valid.tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="groups of k=3"):
        group_advantages(torch.zeros(4), k=3)


def test_group_advantages_match_trl_grpo_formula():
    pytest.importorskip("trl")
    # TRL's GRPO advantages: (r - nanmean) / (nanstd + 1e-4) per group
    from trl.trainer.utils import nanstd
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (6, 4), generator=g).double()   # integer rewards make ties likely
    rewards[1, 2] = torch.nan                                   # a reward function that gave up
    theirs = (rewards - torch.nanmean(rewards, 1, keepdim=True)) / (nanstd(rewards, 1, keepdim=True) + 1e-4)
    ours = group_advantages(rewards.view(-1), 4, eps=1e-4, valid=~rewards.isnan().view(-1)).view(6, 4)
    tied = nanstd(rewards, 1) == 0
    assert torch.allclose(ours[~rewards.isnan()], torch.nan_to_num(theirs)[~rewards.isnan()], atol=1e-12)
    assert (ours[tied] == 0).all() and tied.any() and (~tied).any()


def test_kl_estimators_are_zero_at_the_model_itself():
    logp = torch.log_softmax(torch.randn(3, 7), -1)
    for name, kl in KL_ESTIMATORS.items():
        assert (kl(logp, logp) == 0).all(), name


def test_k3_is_unbiased_for_kl_policy_to_reference_and_never_negative():
    g = torch.Generator().manual_seed(0)
    pi = torch.tensor([0.7, 0.2, 0.05, 0.05], dtype=torch.float64)
    ref = torch.tensor([0.1, 0.3, 0.3, 0.3], dtype=torch.float64)
    exact = float((pi * (pi / ref).log()).sum())            # KL(π ‖ ref) = 1.08
    wrong_way = float((ref * (ref / pi).log()).sum())       # KL(ref ‖ π) = 1.38
    x = torch.multinomial(pi, 200_000, replacement=True, generator=g)   # tokens sampled from π
    est = kl_k3(pi.log()[x], ref.log()[x])
    assert (est >= 0).all()
    se = float(est.std()) / math.sqrt(x.numel())
    assert abs(float(est.mean()) - exact) < 4 * se
    assert abs(float(est.mean()) - wrong_way) > 40 * se     # negative control: the other KL


def test_clipped_surrogate_hand_values():
    ratio = torch.tensor([[0.5, 1.1, 1.5], [0.5, 1.1, 1.5]])
    adv = torch.tensor([2.0, -1.0])
    loss = clipped_surrogate(ratio.log(), torch.zeros(2, 3), adv, clip_eps=0.2)
    # A > 0: min(rA, clip(r)A) = 0.5·2, 1.1·2, 1.2·2;  A < 0: min = -0.8, -1.1, -1.5
    want = -torch.tensor([[1.0, 2.2, 2.4], [-0.8, -1.1, -1.5]])
    assert torch.allclose(loss, want)


@pytest.mark.parametrize("ratio, adv, zero", [
    (1.5, 1.0, True),    # A > 0 and r above 1+ε: more probability would not help, clipped
    (0.5, 1.0, False),   # A > 0 and r below 1-ε: the pessimistic bound still pushes it up
    (0.5, -1.0, True),   # A < 0 and r below 1-ε: clipped
    (1.5, -1.0, False),  # A < 0 and r above 1+ε: still pushed down
    (1.1, 1.0, False),   # inside the range
])
def test_clipped_surrogate_gradient_is_zero_exactly_where_ppo_clips(ratio, adv, zero):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([adv]), clip_eps=0.2).sum().backward()
    if zero:
        assert logp.grad.item() == 0.0
    else:
        assert logp.grad.item() == pytest.approx(-adv * ratio)   # d(-rA)/dlogp = -rA
    assert clip_fraction(logp.detach(), torch.zeros(1, 1), torch.ones(1, 1)) == float(ratio != 1.1)


def test_grpo_loss_hand_value_with_k3_penalty_and_averaging():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    old = logp.clone()   # the first step on a fresh rollout: ratio 1
    ref = torch.tensor([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    # k3 = expm1(ref - logp) - (ref - logp): 0 and e - 2 on row 0, e^-1 on row 1
    per_token = [[-1 + 0.0, -1 + 0.1 * (math.e - 2)], [1 + 0.1 * math.exp(-1)]]
    total, n = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.1)
    assert n == 3 and float(total) == pytest.approx(sum(per_token[0]) + per_token[1][0], rel=1e-6)
    total, n = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.1, average="sequence")
    assert n == 2 and float(total) == pytest.approx(sum(per_token[0]) / 2 + per_token[1][0], rel=1e-6)
    assert grpo_loss(logp, old, adv, mask)[1] == 3      # β = 0 needs no reference
    with pytest.raises(ConfigError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1)
    with pytest.raises(ConfigError, match="max_tokens"):
        reduce_loss(logp, mask, "constant")


def reference_gae(rewards, values, mask, gamma, lam):
    """GAE row by row over the masked-in positions, in plain Python floats."""
    adv = [[0.0] * len(r) for r in rewards]
    for b in range(len(rewards)):
        steps = [t for t in range(len(rewards[b])) if mask[b][t]]
        running = 0.0
        for j in reversed(range(len(steps))):
            t = steps[j]
            v_next = values[b][steps[j + 1]] if j + 1 < len(steps) else 0.0
            running = rewards[b][t] + gamma * v_next - values[b][t] + gamma * lam * running
            adv[b][t] = running
    return adv


def test_gae_hand_computed():
    r, v = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.4                          # δ_2 = r_2 + 0 - V_2 = 0.6
    d1 = 0.0 + 0.9 * 0.4 - 0.2              # δ_1 = 0.16
    d0 = 0.0 + 0.9 * 0.2 - 0.5              # δ_0 = -0.32
    a2, a1 = d2, d1 + 0.72 * d2             # γλ = 0.72
    a0 = d0 + 0.72 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(ret, adv + v)


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_a_plain_loop_with_padding_and_holes(seed):
    g = torch.Generator().manual_seed(seed)
    r, v = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 9, generator=g) > 0.3
    mask[0] = False                          # a row with nothing sampled
    mask[1, :4], mask[1, 4:] = False, True   # left padding (the prompt)
    adv, ret = gae(r, v, mask, gamma=0.95, lam=0.9)
    want = torch.tensor(reference_gae(r.tolist(), v.tolist(), mask.tolist(), 0.95, 0.9), dtype=torch.float64)
    assert torch.allclose(adv, want)
    assert torch.allclose(ret, (want + v) * mask)


def test_gae_with_gamma_lambda_one_is_the_monte_carlo_return_minus_value():
    r, v = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert ret.tolist() == [[6.0, 5.0, 3.0]] and adv.tolist() == [[5.5, 4.5, 2.5]]


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    adv, _ = gae(r, v, torch.ones(2, 5), gamma=0.9, lam=0.0)
    next_v = torch.cat([v[:, 1:], torch.zeros(2, 1)], 1)
    assert torch.allclose(adv, r + 0.9 * next_v - v)


def test_ppo_policy_loss_is_the_token_mean_of_the_clipped_surrogate():
    logp, old = torch.tensor([[-0.5, -1.0, -3.0]]), torch.tensor([[-1.0, -1.0, -1.0]])
    adv, mask = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[1, 1, 0]])
    total, n = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # token 0: r = e^0.5 = 1.65 clipped to 1.2, loss -1.2; token 1: r = 1, loss 2; token 2 masked
    assert n == 2 and float(total) == pytest.approx(-1.2 + 2.0)
    with pytest.raises(ConfigError, match="unknown KL estimator"):
        kl_penalized_rewards(torch.zeros(1), logp, old, mask, 0.1, kl="k4")


def test_kl_penalized_rewards_put_the_score_on_the_last_sampled_token():
    logp = torch.tensor([[0.0, -1.0, -1.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, -2.0, -1.5, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]])   # row 0: prompt, two tokens, padding
    out = kl_penalized_rewards(torch.tensor([3.0, 7.0]), logp, ref, mask, beta=0.2)
    assert torch.allclose(out, torch.tensor([[0.0, -0.2, 3.0 - 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_value_loss_hand_values():
    v, old, ret = torch.tensor([[2.0, 0.1]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    total, n = value_loss(v, old, ret, torch.ones(1, 2), clip_range=0.2)
    # token 0: max((2-1)², (0.2-1)²)/2 = 0.5; token 1: inside the range, 0.1²/2 = 0.005
    assert n == 2 and float(total) == pytest.approx(0.505)


def test_whiten_has_zero_mean_and_unit_variance_on_the_mask():
    x, mask = torch.randn(3, 8, dtype=torch.float64) * 5 + 2, torch.rand(3, 8) > 0.4
    w = whiten(x, mask)
    kept = w[mask]
    assert abs(float(kept.mean())) < 1e-9 and float(kept.var(unbiased=False)) == pytest.approx(1.0)
    assert (w[~mask] == 0).all()
    assert float(whiten(x, mask, shift_mean=False)[mask].mean()) == pytest.approx(float(x[mask].mean()))


def tiny(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def test_kl_to_itself_is_zero_and_to_another_model_is_the_exact_kl():
    x = torch.randint(0, 32, (2, 6))
    y = torch.where(torch.rand(2, 6) > 0.3, torch.randint(0, 32, (2, 6)), -100)
    a, b = tiny(0), tiny(1)
    total, n = kl_to(a, a, (x, y))
    assert float(total) == 0.0 and n == int((y != -100).sum())
    keep = y != -100
    with torch.no_grad():   # the reference in float64: ours sums float32 terms
        p = torch.distributions.Categorical(logits=a(x)[keep].double())
        q = torch.distributions.Categorical(logits=b(x)[keep].double())
        want = float(torch.distributions.kl_divergence(p, q).sum())
    assert float(kl_to(a, b, (x, y))[0]) == pytest.approx(want, rel=1e-4) and want > 0.01


def test_token_logprobs_are_minus_the_cross_entropy():
    logits, labels = torch.randn(2, 5, 11), torch.tensor([[1, 2, -100, 4, 5], [-100, 0, 10, 3, 3]])
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    assert torch.allclose(token_logprobs(logits, labels), -ce)
