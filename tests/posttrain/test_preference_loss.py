"""Preference losses: DPO at initialization is log 2 per pair; each loss equals a value worked
by hand on tiny tensors; each equals trl's implementation of the same formula on the same
log-probabilities (and our log-probabilities equal trl's `get_batch_logps`); and each check
can fail (a wrong beta, a swapped pair, sums for means are told apart).

trl's losses live in trainer methods. We call them on an instance made with `__new__` (no
model, no dataset, no accelerator) holding only the attributes the method reads:
`DPOTrainer._compute_loss` (DPO and IPO; its model call answered by a stub returning our
per-token log-probabilities), `CPOTrainer.cpo_loss` (SimPO, and the label-smoothed logistic
loss, which trl's DPO trainer no longer offers), `ORPOTrainer.odds_ratio_loss` (ORPO) and
`ORPOTrainer.get_batch_logps` (log-probabilities of the completion tokens)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from lmstack.errors import ConfigError
from lmstack.models import GPT, GPTConfig
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.posttrain.logprobs import (
    PairLogprobs,
    SequenceLogprobs,
    pair_logprobs,
    reference_logprobs,
    sequence_logprobs,
    token_logprobs,
)
from lmstack.posttrain.preference import PreferencePair, collate_pairs
from lmstack.posttrain.preference_loss import (
    PREFERENCE_LOSSES,
    PreferenceLossConfig,
    dpo_loss,
    ipo_loss,
    orpo_loss,
    preference_loss,
    simpo_loss,
)
from lmstack.posttrain.sft_data import Example

ATOL = 1e-6


def random_batch(seed: int, pairs: int = 3, vocab: int = 11):
    """A collated batch of random pairs of different lengths, and random logits for it."""
    g = torch.Generator().manual_seed(seed)

    def example(prompt: int, reply: int) -> Example:
        ids = torch.randint(0, vocab, (prompt + reply,), generator=g).tolist()
        return Example(ids, [False] * prompt + [True] * reply)

    lens = torch.randint(1, 6, (pairs, 3), generator=g).tolist()
    batch = [PreferencePair(example(p, c), example(p, r)) for p, c, r in lens]
    ids, labels, lengths = collate_pairs(batch)
    logits = torch.randn(*ids.shape, vocab, generator=g, dtype=torch.float64)
    return ids, labels, lengths, logits


def pair_of(logits: torch.Tensor, labels: torch.Tensor) -> PairLogprobs:
    return PairLogprobs.from_rows(sequence_logprobs(logits, labels))


# ---- by hand -----------------------------------------------------------------------------

def test_dpo_at_initialization_is_log_2_per_pair():
    ids, labels, _, _logits = random_batch(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    policy = pair_logprobs(model, ids, labels)
    reference = reference_logprobs(model, ids, labels)  # the same weights: π = π_ref
    out = preference_loss(PreferenceLossConfig("dpo", beta=0.3), policy, reference)
    torch.testing.assert_close(out.losses, torch.full((3,), math.log(2)), atol=ATOL, rtol=0)
    assert out.metrics()["rewards/margin"] == 0.0 and out.metrics()["rewards/accuracy"] == 0.0
    # Negative control: after one step the policy moves off the reference, and so does the loss.
    out.losses.sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1.0 * p.grad
    moved = preference_loss(PreferenceLossConfig("dpo", beta=0.3), pair_logprobs(model, ids, labels), reference)
    assert float(moved.losses.detach().mean()) < math.log(2) - 1e-3


def test_each_loss_against_a_hand_computed_value():
    sig = lambda x: 1 / (1 + math.exp(-x))
    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-4.0, -9.0, -5.0, -7.0))
    h = (-4 + 5) - (-9 + 7)  # 3
    assert float(dpo_loss(pc, pr, rc, rr, beta=0.2).losses) == pytest.approx(-math.log(sig(0.6)))
    smoothed = -(0.9 * math.log(sig(0.2 * h)) + 0.1 * math.log(sig(-0.2 * h)))
    assert float(dpo_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=0.1).losses) == pytest.approx(smoothed)
    assert float(ipo_loss(pc, pr, rc, rr, tau=0.5).losses) == pytest.approx((h - 1.0) ** 2)
    # SimPO on means: rewards 2·(−1), 2·(−1.5); margin 1 − γ 0.3
    assert float(simpo_loss(pc / 4, pr / 6, beta=2.0, gamma=0.3).losses) == pytest.approx(-math.log(sig(0.7)))
    # ORPO: P_w = 0.5 (odds 1), P_l = 0.2 (odds 1/4): log odds ratio ln 4
    out = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]), torch.tensor([1.25]), lam=0.5)
    assert float(out.losses) == pytest.approx(1.25 + 0.5 * -math.log(sig(math.log(4))))
    assert float(out.chosen_rewards - out.rejected_rewards) == pytest.approx(math.log(4))


def test_sequence_logprobs_by_hand_and_the_padding_counts_nothing():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    s = sequence_logprobs(logits, torch.tensor([[0, 2, IGNORE_INDEX]]))
    assert float(s.sum) == pytest.approx(math.log(0.5 * 0.8)) and float(s.count) == 2
    assert float(s.mean) == pytest.approx(math.log(0.5 * 0.8) / 2)
    # the same row right-padded: the extra position's logits are ignored whatever they are
    padded = torch.cat([logits, torch.randn(1, 2, 3)], 1)
    s2 = sequence_logprobs(padded, torch.tensor([[0, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]))
    assert float(s2.sum) == pytest.approx(float(s.sum))


# ---- against trl -------------------------------------------------------------------------

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")

ACCELERATOR = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                              gather_for_metrics=lambda x: x, unwrap_model=lambda m: m)


def trl_dpo_trainer(loss_type: str, beta: float):
    """A DPOTrainer with only what `_compute_loss` reads (reference log-probs precomputed)."""
    t = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    t.__dict__.update(model=SimpleNamespace(training=True), accelerator=ACCELERATOR,
                      aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                      f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
                      beta=beta, label_smoothing=0.0, use_weighting=False,
                      _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    return t


def trl_dpo_loss(loss_type: str, beta: float, ids, labels, logits, ref: PairLogprobs):
    """trl's loss and logged metrics, its model answering with our per-token log-probs."""
    per_token = token_logprobs(logits, labels)[:, :-1]          # (2B, T-1): trl's shifted layout
    completion_mask = torch.zeros_like(ids)
    completion_mask[:, 1:] = (labels[:, :-1] != IGNORE_INDEX).long()  # mask over the input ids

    def model(**kwargs):
        assert kwargs["fused_lm_head"] and (kwargs["labels"][:, 1:] == labels[:, :-1]).all()
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())

    trainer = trl_dpo_trainer(loss_type, beta)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion_mask,
              "ref_chosen_logps": ref.chosen.sum, "ref_rejected_logps": ref.rejected.sum}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_dpo_and_ipo_equal_trl(loss, seed):
    ids, labels, _, logits = random_batch(seed)
    policy = pair_of(logits, labels)
    ref_logits = logits + 0.5 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(9),
                                            dtype=logits.dtype)
    reference = pair_of(ref_logits, labels)
    out = preference_loss(PreferenceLossConfig(loss, beta=0.2), policy, reference)
    trl_loss, trl_metrics = trl_dpo_loss({"dpo": "sigmoid", "ipo": "ipo"}[loss], 0.2, ids, labels, logits, reference)
    assert float(out.losses.mean()) == pytest.approx(float(trl_loss), abs=ATOL)
    assert trl_metrics["logps/chosen"] == pytest.approx(float(policy.chosen.sum.mean()), abs=ATOL)
    if loss == "dpo":  # trl logs DPO's rewards (for IPO it logs β·sum, not the loss's h)
        ours = out.metrics()
        for key in ("chosen", "rejected"):
            assert ours[f"rewards/{key}"] == pytest.approx(trl_metrics[f"rewards/{key}"], abs=ATOL)
        assert ours["rewards/margin"] == pytest.approx(trl_metrics["rewards/margins"], abs=ATOL)
        assert ours["rewards/accuracy"] == pytest.approx(trl_metrics["rewards/accuracies"], abs=ATOL)
    # Negative control: another beta gives another loss, so the comparison can fail.
    other = preference_loss(PreferenceLossConfig(loss, beta=0.3), policy, reference)
    assert abs(float(other.losses.mean()) - float(trl_loss)) > 1e-3


def trl_cpo_trainer(loss_type: str, beta: float, gamma: float = 0.5, label_smoothing: float = 0.0):
    t = trl_cpo.CPOTrainer.__new__(trl_cpo.CPOTrainer)
    t.__dict__.update(accelerator=ACCELERATOR, alpha=0.0, loss_type=loss_type, beta=beta,
                      simpo_gamma=gamma, label_smoothing=label_smoothing)
    return t


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_equals_trl_cpo_simpo(label_smoothing):
    _ids, labels, _, logits = random_batch(2)
    policy = pair_of(logits, labels)
    cfg = PreferenceLossConfig("simpo", beta=2.5, gamma=0.7, label_smoothing=label_smoothing)
    out = preference_loss(cfg, policy)
    trainer = trl_cpo_trainer("simpo", 2.5, 0.7, label_smoothing)
    losses, chosen, rejected = trainer.cpo_loss(policy.chosen.mean, policy.rejected.mean)
    torch.testing.assert_close(out.losses, losses, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.chosen_rewards, chosen, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, rejected, atol=ATOL, rtol=0)
    # Negative control: SimPO on sums instead of means is another loss.
    wrong = simpo_loss(policy.chosen.sum, policy.rejected.sum, 2.5, 0.7, label_smoothing)
    assert (wrong.losses - losses).abs().max() > 1e-3


def test_label_smoothed_dpo_equals_trl_logistic_loss_on_the_log_ratios():
    _ids, labels, _, logits = random_batch(3)
    policy, reference = pair_of(logits, labels), pair_of(logits.flip(-1), labels)
    out = preference_loss(PreferenceLossConfig("dpo", beta=0.4, label_smoothing=0.15), policy, reference)
    # cpo_loss("sigmoid") is −(1−ε) log σ(β x) − ε log σ(−β x) on x = its two inputs' difference
    trainer = trl_cpo_trainer("sigmoid", 0.4, label_smoothing=0.15)
    losses, _, _ = trainer.cpo_loss(policy.chosen.sum - reference.chosen.sum,
                                    policy.rejected.sum - reference.rejected.sum)
    torch.testing.assert_close(out.losses, losses, atol=ATOL, rtol=0)
    plain = preference_loss(PreferenceLossConfig("dpo", beta=0.4), policy, reference)
    assert (plain.losses - losses).abs().max() > 1e-3


def test_orpo_equals_trl_odds_ratio_loss():
    _ids, labels, _, logits = random_batch(4)
    policy = pair_of(logits, labels)
    out = preference_loss(PreferenceLossConfig("orpo", beta=0.25), policy)
    trainer = trl_orpo.ORPOTrainer.__new__(trl_orpo.ORPOTrainer)
    trainer.__dict__.update(accelerator=ACCELERATOR, beta=0.25)
    losses, _, _, _, log_odds_ratio = trainer.odds_ratio_loss(policy.chosen.mean, policy.rejected.mean)
    # trl returns λ log σ(log odds ratio) (in float32) and subtracts it from the NLL; ours
    # adds its negative. Its last output is the batch's mean log odds ratio (our margin).
    torch.testing.assert_close(out.losses - (-policy.chosen.mean), -losses.double(), atol=1e-5, rtol=0)
    assert out.metrics()["rewards/margin"] == pytest.approx(float(log_odds_ratio), abs=1e-5)
    # Negative control: chosen and rejected swapped is told apart.
    swapped = preference_loss(PreferenceLossConfig("orpo", beta=0.25),
                              PairLogprobs(policy.rejected, policy.chosen))
    assert (swapped.losses - out.losses).abs().max() > 1e-3


@pytest.mark.parametrize("average", [False, True])
def test_logprobs_equal_trl_get_batch_logps(average):
    ids, labels, _, logits = random_batch(5)
    trl_labels = ids.masked_fill(torch.ones_like(ids, dtype=torch.bool), IGNORE_INDEX)
    trl_labels[:, 1:] = labels[:, :-1]                 # trl's labels sit on the input ids
    theirs = trl_orpo.ORPOTrainer.get_batch_logps(logits, trl_labels, average_log_prob=average)
    s = sequence_logprobs(logits, labels)
    torch.testing.assert_close(s.mean if average else s.sum, theirs, atol=1e-9, rtol=0)


# ---- the registry and bad configs --------------------------------------------------------

def test_registry_and_bad_configs():
    assert set(PREFERENCE_LOSSES) == {"dpo", "ipo", "simpo", "orpo"}
    assert PreferenceLossConfig("simpo").strength == 2.0 and PreferenceLossConfig("dpo").strength == 0.1
    policy = PairLogprobs(SequenceLogprobs(torch.tensor([-1.0]), torch.ones(1)),
                          SequenceLogprobs(torch.tensor([-2.0]), torch.ones(1)))
    with pytest.raises(ConfigError, match="reference"):
        preference_loss(PreferenceLossConfig("dpo"), policy)
    with pytest.raises(ConfigError, match="unknown preference loss 'kto'"):
        PreferenceLossConfig("kto")
    with pytest.raises(ConfigError, match=r"\[0, 0.5\)"):
        PreferenceLossConfig("dpo", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="applies to dpo and simpo"):
        PreferenceLossConfig("ipo", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="beta must be positive"):
        PreferenceLossConfig("dpo", beta=0.0)
    with pytest.raises(ConfigError, match="even number of rows"):
        PairLogprobs.from_rows(SequenceLogprobs(torch.zeros(3), torch.ones(3)))
