"""The one decode step (lmstack/infer/step.py): a plan compiled once per request, and `step`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.config import GenerationConfig
from lmstack.infer.step import DecodePlan, draw, new_rows, step


def plan(**kw) -> DecodePlan:
    return DecodePlan.compile(GenerationConfig(**kw).validate(8), stop_ids=[7], ctx=100)


def test_compile_derives_each_fact_once():
    p = DecodePlan.compile(GenerationConfig(stop=["ab", "xyz"], best_of=2, temperature=0.5).validate(),
                           stop_ids=[3, 3, 5])
    assert p.longest_stop == 3 and p.stop_ids == {3, 5} and p.logprobs and not p.greedy
    assert not p.passthrough  # temperature 0.5 rescales
    assert plan(temperature=0).passthrough and plan(temperature=1).passthrough
    assert not plan(top_k=2).passthrough


def test_chooses_like_ignores_what_only_ends_a_row():
    a = plan(temperature=0.7, seed=1, max_new_tokens=3, stop=["x"])
    b = plan(temperature=0.7, seed=2, max_new_tokens=9)
    assert a.chooses_like(b)
    assert not a.chooses_like(plan(temperature=0.8))
    assert not a.chooses_like(plan(temperature=0.7, logprobs=True))
    assert not a.chooses_like(plan(temperature=0.7, top_logprobs=2, logprobs=True))


def test_report_is_the_raw_log_softmax_of_the_chosen_token():
    logits = torch.randn(3, 8)
    p = plan(logprobs=True, top_logprobs=2, temperature=0.5, top_k=2)
    reports = p.report(logits, [1, 5, 7])
    logp = F.log_softmax(logits, -1)  # before any processor: the model's own probabilities
    for i, (token, (lp, top)) in enumerate(zip([1, 5, 7], reports)):
        assert lp == pytest.approx(float(logp[i, token]))
        assert [t for t, _ in top] == logp[i].topk(2).indices.tolist()
    assert plan().report(logits, [1, 2, 3]) == [(None, None)] * 3


def test_step_records_each_row_by_its_own_plan():
    logits = torch.full((2, 8), -5.0)
    logits[:, 2] = 5.0                                   # greedy picks 2, every time
    short, long = plan(temperature=0, max_new_tokens=1), plan(temperature=0, max_new_tokens=4)
    rows = new_rows([[0]], short) + new_rows([[1]], long)
    step(logits, rows)
    assert [r.tokens for r in rows] == [[2], [2]]
    assert [r.finish_reason for r in rows] == ["length", None]
    logits[:, 7] = 9.0                                   # the stop id wins: the row ends, id not kept
    step(logits[1:], rows[1:])
    assert rows[1].tokens == [2] and rows[1].finish_reason == "stop" and rows[1].stop_token == 7


def test_step_raises_before_recording_when_a_row_has_no_token_left():
    rows = new_rows([[0], [1]], plan(temperature=0, banned_token_ids=list(range(8)), max_new_tokens=4))
    with pytest.raises(ConfigError, match="banned_token_ids"):
        step(torch.zeros(2, 8), rows)
    assert all(r.tokens == [] and r.finish_reason is None for r in rows)


def test_seeded_rows_draw_alike_whatever_the_batch():
    p = plan(temperature=1.0, seed=11)
    logits = torch.randn(1, 8)
    alone = new_rows([[0]], p)
    step(logits, alone)
    crowd = new_rows([[5], [0], [3]], p)  # row 1 is sample 0 of its prompt, as `alone` is
    crowd = [crowd[1], crowd[0], crowd[2]]
    step(torch.cat([logits, torch.randn(2, 8)]), crowd)
    assert crowd[0].tokens == alone[0].tokens


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1), min_size=2, max_size=6), min_size=1, max_size=4),
       st.integers(0, 2**31))
def test_draw_never_picks_a_zero_probability_token(rows, seed):
    probs = torch.tensor([r + [0.0] * (6 - len(r)) for r in rows], dtype=torch.float64)
    probs[:, 0] += 1e-3  # every row has some mass
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(rows))]
    for i, t in enumerate(draw(probs, gens)):
        assert probs[i, t] > 0
