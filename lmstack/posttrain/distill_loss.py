"""Distillation on logits: forward KL, reverse KL and GKD's generalized Jensen–Shannon divergence.

Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network") trains a student to match a teacher's next-token distribution at every trained
position. Both distributions are softened by a temperature T, and the divergence is multiplied
by T² so that its gradients keep the size they have at T = 1 (they shrink as 1/T² otherwise).

- forward KL(teacher ‖ student): mass-covering, the classic KD loss (the student must put mass
  wherever the teacher does);
- reverse KL(student ‖ teacher): mode-seeking (the student may drop some of the teacher's modes);
- generalized JSD(β) (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning
  from Self-Generated Mistakes", GKD, eq. for D_JSD(β)), with P the teacher, Q the student and
  M = βP + (1-β)Q:  JSD(β) = β KL(P ‖ M) + (1-β) KL(Q ‖ M).
  The paper says it interpolates between forward and reverse KL. Exactly: JSD(β) itself goes
  to 0 at both ends (M becomes Q, or P); it is JSD(β)/β that tends to forward KL as β → 0, and
  JSD(β)/(1-β) that tends to reverse KL as β → 1 (tests/posttrain/test_distill_loss.py checks
  both). So, as in TRL's GKD trainer, β = 0 here *is* forward KL and β = 1 reverse KL.

Every loss is token-level over the trained positions (labels != -100) and returns
`(summed loss, count)`, the trainer's loss_fn contract (lmstack/train/objective.py). The
teacher and the student must share one tokenizer: `check_same_vocab` says where they differ.

    loss_sum, n = distill_loss(student_logits, teacher_logits, labels, "forward_kl", temperature=2.0)
    loss_fn = kd_loss_fn(teacher, KDConfig(divergence="jsd", beta=0.5))   # for the trainer's loop
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError
from lmstack.models.protocol import IGNORE_INDEX
from lmstack.tokenizer import Tokenizer

Divergence = Callable[..., torch.Tensor]  # (student_logits, teacher_logits, beta) -> per token


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis from log-probabilities: Σ p (log p - log q); 0·log 0 is 0."""
    # a masked token (logit -inf) has log p = -inf: clamped, 0 · (finite) is 0 and so is its
    # gradient, where 0 · inf would be nan
    low = torch.finfo(log_p.dtype).min
    return (log_p.exp() * (log_p.clamp(min=low) - log_q.clamp(min=low))).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               beta: float = 0.0) -> torch.Tensor:
    """KL(teacher ‖ student) per position: (..., V) logits -> (...).

    >>> x = torch.tensor([[0.0, 1.0, 2.0]])
    >>> forward_kl(x, x)
    tensor([0.])
    """
    return _kl(F.log_softmax(teacher_logits, -1), F.log_softmax(student_logits, -1))


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               beta: float = 1.0) -> torch.Tensor:
    """KL(student ‖ teacher) per position: (..., V) logits -> (...).

    >>> s, t = torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.25, 0.75]))
    >>> round(float(reverse_kl(s, t)), 4)   # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    0.1438
    """
    return _kl(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1))


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    beta: float = 0.5) -> torch.Tensor:
    """GKD's JSD(β) per position, P teacher, Q student: β KL(P‖M) + (1-β) KL(Q‖M), M = βP + (1-β)Q.

    β = 0 and β = 1 give the limits of the normalized divergence, forward and reverse KL.

    >>> s, t = torch.log(torch.tensor([1.0, 0.0])), torch.log(torch.tensor([0.0, 1.0]))
    >>> round(float(generalized_jsd(s, t, 0.5)), 4)   # disjoint supports: ln 2, the JSD's maximum
    0.6931
    """
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"GKD's beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits)
    low = torch.finfo(teacher_logits.dtype).min  # a masked token's -inf, kept finite
    log_p = F.log_softmax(teacher_logits, -1).clamp(min=low)  # (..., V)
    log_q = F.log_softmax(student_logits, -1).clamp(min=low)  # (..., V)
    # log M = log(β P + (1-β) Q), factored around the larger of P and Q so that nothing
    # overflows and M is exactly Q when P == Q (a logsumexp leaves rounding there)
    d = log_p - log_q  # (..., V)
    log_m = torch.where(d <= 0, log_q + torch.log1p(beta * torch.expm1(d.clamp(max=0))),
                        log_p + torch.log1p((1 - beta) * torch.expm1((-d).clamp(max=0))))
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


DIVERGENCES: dict[str, Divergence] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": generalized_jsd,
}


def check_kd(divergence: str, temperature: float, beta: float) -> None:
    """Raise ConfigError for an unknown divergence, a temperature <= 0 or a β outside [0, 1]."""
    if divergence not in DIVERGENCES:
        raise ConfigError(f"unknown divergence {divergence!r}; choose one of {sorted(DIVERGENCES)}")
    if temperature <= 0:
        raise ConfigError(f"the distillation temperature must be positive, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"GKD's beta must lie in [0, 1], got {beta}")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 divergence: str = "forward_kl", temperature: float = 1.0,
                 beta: float = 0.5) -> tuple[torch.Tensor, int]:
    """(T² · divergence summed over trained positions, their count); logits (B, T, V), labels (B, T).

    >>> x = torch.randn(2, 3, 5)
    >>> loss, n = distill_loss(x, x, torch.tensor([[1, 2, -100], [-100, 3, 4]]))
    >>> float(loss), n
    (0.0, 4)
    """
    check_kd(divergence, temperature, beta)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ: distilling on logits needs one "
                          "vocabulary (check_same_vocab says where the tokenizers differ)")
    keep = labels != IGNORE_INDEX  # (B, T)
    s = student_logits[keep].float() / temperature  # (N, V): only the trained positions
    t = teacher_logits[keep].float().detach() / temperature  # (N, V): the teacher is a target
    per_token = DIVERGENCES[divergence](s, t, beta)  # (N,)
    return per_token.sum() * temperature ** 2, int(keep.sum())


@dataclass
class KDConfig:
    """How the student matches the teacher: the divergence, its temperature and GKD's β."""

    divergence: str = "forward_kl"   # forward_kl | reverse_kl | jsd
    temperature: float = 1.0         # Hinton et al. use 1-20; GKD uses 1
    beta: float = 0.5                # jsd only: 0 is forward KL, 1 reverse KL


def batch_logits(model: torch.nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits (B, T, V) of a batch (x, y) or a packed SFT batch (ids, labels, positions, segments)."""
    if len(batch) >= 4:
        return model(batch[0], position_ids=batch[2], segment_ids=batch[3])
    return model(batch[0])


def kd_loss_fn(teacher: torch.nn.Module, cfg: KDConfig | None = None):
    """A trainer loss_fn(student, batch) -> (sum, count) distilling `teacher` (frozen, no grad)."""
    cfg = cfg or KDConfig()
    check_kd(cfg.divergence, cfg.temperature, cfg.beta)

    def loss_fn(model: torch.nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            teacher_logits = batch_logits(teacher, batch)  # (B, T, V)
        return distill_loss(batch_logits(model, batch), teacher_logits, batch[1],
                            cfg.divergence, cfg.temperature, cfg.beta)

    return loss_fn


Vocab = Tokenizer | Mapping


def _id_table(vocab: Vocab) -> dict[int, object]:
    """id -> token (bytes, or the special token's name) of a Tokenizer or a vocab dict."""
    if isinstance(vocab, Tokenizer):
        table: dict[int, object] = dict(vocab.vocab)
        table.update({i: s for s, i in vocab.special_tokens.items()})
        table.update({i: s for s, i in vocab.added_tokens.items()})
        return table
    items = list(vocab.items())
    if items and isinstance(items[0][1], int) and not isinstance(items[0][0], int):
        return {int(i): tok for tok, i in items}  # token -> id, as tokenizer.json writes it
    return {int(i): tok for i, tok in items}  # id -> token


def check_same_vocab(teacher: Vocab, student: Vocab) -> None:
    """Raise ConfigError unless teacher and student map every id to the same token.

    >>> check_same_vocab({"a": 0, "b": 1}, {0: "a", 1: "b"})
    >>> check_same_vocab({"a": 0, "b": 1}, {"a": 0, "c": 1})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: teacher and student tokenizers differ: id 1 is 'b' in the teacher, 'c' in the student ...
    """
    t, s = _id_table(teacher), _id_table(student)
    fix = ("distilling on logits compares the two distributions id by id, so both must use one "
           "tokenizer: train the student with the teacher's tokenizer, or use data distillation "
           "(the teacher's generated text), which works across tokenizers")
    if len(t) != len(s):
        raise ConfigError(f"teacher and student tokenizers differ: the teacher's vocabulary "
                          f"has {len(t)} tokens, the student's {len(s)}; {fix}")
    for i in sorted(set(t) | set(s)):
        if t.get(i) != s.get(i):
            raise ConfigError(f"teacher and student tokenizers differ: id {i} is {t.get(i)!r} "
                              f"in the teacher, {s.get(i)!r} in the student (vocabularies of "
                              f"{len(t)} tokens each); {fix}")
