"""Logits processors: truncation filters hold their defining properties against slow
list-based references, penalties match hand-computed values and Hugging Face's processors,
settings are validated, and `process` applies its steps in the documented order."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmstack.errors import ConfigError
from lmstack.infer.processors import (
    ProcessorSettings,
    apply_temperature,
    ban_sequences,
    ban_tokens,
    logit_bias,
    min_new_tokens,
    min_p_filter,
    no_repeat_ngram,
    presence_frequency_penalty,
    process,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
    typical_filter,
)

INF = float("inf")

rows = st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=12)
masses = st.floats(0.01, 0.99)


def probs_of(row: list[float]) -> list[float]:
    """Softmax in plain Python (float64), the reference the filters are held to."""
    top = max(row)
    e = [math.exp(x - top) for x in row]
    return [x / sum(e) for x in e]


def kept(out: torch.Tensor) -> set[int]:
    return set(out[0].isfinite().nonzero().flatten().tolist())


# ----------------------------------------------------------------------------- truncation


def test_top_k_1_keeps_only_the_argmax_so_sampling_is_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    out = top_k_filter(logits, 1)
    assert (out.isfinite().sum(-1) == 1).all()
    assert torch.equal(out.argmax(-1), logits.argmax(-1))
    samples = torch.multinomial(out.softmax(-1), 20, replacement=True)
    assert (samples == logits.argmax(-1, keepdim=True)).all()


def test_top_k_keeps_ties_and_its_disabled_values_change_nothing():
    x = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    assert kept(top_k_filter(x, 2)) == {1, 2, 3}
    for k in (0, 5, 99):
        out = top_k_filter(x, k)
        assert torch.equal(out, x) and out is not x


def test_disabled_filters_and_temperature_one_are_exact_copies():
    x = torch.randn(3, 17, generator=torch.Generator().manual_seed(1))
    for out in (top_p_filter(x, 1.0), typical_filter(x, 1.0), min_p_filter(x, 0.0),
                apply_temperature(x, 1.0)):
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@given(rows, masses)
def test_top_p_keeps_the_minimal_nucleus(row, p):
    out = top_p_filter(torch.tensor([row], dtype=torch.float64), p)
    probs = probs_of(row)
    keep = kept(out)
    mass = sum(probs[i] for i in keep)
    assert mass >= p - 1e-12
    if len(keep) > 1:  # minimal: without its least probable token the nucleus is short of p
        assert mass - min(probs[i] for i in keep) < p + 1e-12
    dropped = set(range(len(row))) - keep
    if dropped:  # and it is made of the most probable tokens
        assert min(probs[i] for i in keep) >= max(probs[i] for i in dropped)
    assert torch.equal(out[0][list(keep)], torch.tensor(row, dtype=torch.float64)[list(keep)])


def test_top_p_counts_mass_of_exactly_p_as_enough():
    assert len(kept(top_p_filter(torch.zeros(1, 4), 0.5))) == 2  # four tokens of 0.25 each
    assert len(kept(top_p_filter(torch.zeros(1, 4), 0.51))) == 3


def test_top_p_ranks_every_token_when_the_first_candidates_fall_short():
    x = torch.zeros(2, 1000)
    x[1, 0] = 20.0  # a peaked row next to a flat one
    out = top_p_filter(x, 0.9055)  # flat: 0.001 each, 906 tokens hold the first mass >= p
    assert out[0].isfinite().sum() == 906 and kept(out[1:]) == {0}


def min_p_reference(row: list[float], p: float) -> set[int]:
    probs = probs_of(row)
    top = max(probs)
    # a token within rounding of the threshold could go either way: let hypothesis skip it
    assume(all(abs(q - p * top) > 1e-9 for q, x in zip(probs, row) if x != max(row)))
    return {i for i, q in enumerate(probs) if q >= p * top}


@given(rows, st.floats(0.0, 1.0))
def test_min_p_matches_a_list_reference(row, p):
    expected = set(range(len(row))) if p == 0 else min_p_reference(row, p)
    assert kept(min_p_filter(torch.tensor([row], dtype=torch.float64), p)) == expected


def typical_reference(row: list[float], p: float) -> set[int]:
    probs = probs_of(row)
    entropy = -sum(q * math.log(q) for q in probs if q > 0)
    gap = [abs(-math.log(q) - entropy) if q > 0 else INF for q in probs]
    # near-ties between different logits, or a prefix mass within rounding of p, are ambiguous
    assume(all(abs(gap[i] - gap[j]) > 1e-9 for i in range(len(row)) for j in range(i)
               if row[i] != row[j]))
    order = sorted(range(len(row)), key=lambda i: gap[i])
    keep, mass = set(), 0.0
    for i in order:
        keep.add(i)
        mass += probs[i]
        assume(abs(mass - p) > 1e-9)
        if mass >= p:
            break
    return keep


@given(rows, masses)
def test_typical_matches_a_list_reference(row, p):
    out = typical_filter(torch.tensor([row], dtype=torch.float64), p)
    # tokens with equal logits are interchangeable at the edge: compare the kept logits
    assert sorted(row[i] for i in kept(out)) == sorted(row[i] for i in typical_reference(row, p))


def test_typical_can_drop_the_most_probable_token():
    probs = torch.tensor([[0.5, 0.3, 0.2]])  # entropy 1.03 nats; surprisals .69, 1.20, 1.61
    assert kept(typical_filter(probs.log(), 0.2)) == {1}


def test_filters_work_row_by_row_and_keep_dtype_and_bans():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 40, generator=g).to(torch.bfloat16)
    x[2, :39] = -INF  # a row with one token left keeps it
    filters = [(top_k_filter, 3), (top_p_filter, 0.5), (min_p_filter, 0.3), (typical_filter, 0.5)]
    for fn, arg in filters:
        out = fn(x, arg)
        assert out.dtype == torch.bfloat16
        assert kept(out[2:3]) == {39}
        for r in range(5):
            assert torch.equal(out[r : r + 1], fn(x[r : r + 1], arg))
        assert torch.equal(out[out.isfinite()], x[out.isfinite()])  # survivors untouched


@pytest.mark.parametrize("fn, arg", [(top_k_filter, 4), (top_p_filter, 0.7),
                                     (min_p_filter, 0.2), (typical_filter, 0.6)])
def test_banned_tokens_are_as_if_outside_the_vocabulary(fn, arg):
    x = torch.randn(1, 20, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    allowed = torch.arange(20) % 3 != 0
    banned = x.masked_fill(~allowed, -INF)
    assert torch.equal(fn(banned, arg)[:, allowed], fn(x[:, allowed], arg))
    assert torch.isneginf(fn(banned, arg)[:, ~allowed]).all()


def test_temperature_scales_and_rejects_zero():
    out = apply_temperature(torch.tensor([[1.0, -3.0]]), 2.0)
    assert torch.equal(out, torch.tensor([[0.5, -1.5]]))
    with pytest.raises(ConfigError, match="greedy"):
        apply_temperature(torch.zeros(1, 2), 0.0)


# ----------------------------------------------------------------------------- penalties


def test_repetition_penalty_by_hand():
    x = torch.tensor([[3.0, -3.0, 1.5, -1.0, 2.0], [3.0, -3.0, 1.5, -1.0, 2.0]])
    out = repetition_penalty(x, [[0, 1, 1, 1, 3], []], 1.5)
    # seen: 0 (positive, divided), 1 (negative, multiplied; once despite 3 occurrences), 3
    assert torch.equal(out[0], torch.tensor([2.0, -4.5, 1.5, -1.5, 2.0]))
    assert torch.equal(out[1], x[1])
    assert torch.equal(repetition_penalty(x, [[0], [1]], 1.0), x)


def test_presence_and_frequency_by_hand():
    x = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    out = presence_frequency_penalty(x, [[0, 0, 0, 3]], presence=0.5, frequency=0.2)
    # id 0: 1 - 0.5 - 3 * 0.2 = -0.1; id 3: -1 - 0.5 - 0.2 = -1.7 (same shift whatever the sign)
    assert torch.allclose(out, torch.tensor([[-0.1, 1.0, 1.0, -1.7]]))
    negative = presence_frequency_penalty(x, [[1, 1]], presence=-1.0, frequency=-0.5)
    assert torch.equal(negative, torch.tensor([[1.0, 3.0, 1.0, -1.0]]))


def test_no_repeat_ngram_on_a_constructed_history():
    history = [5, 1, 2, 3, 9, 1, 2, 4, 0, 1, 2]  # (1, 2) was followed by 3 and by 4

    def banned(n: int) -> set[int]:
        return set(range(10)) - kept(no_repeat_ngram(torch.zeros(1, 10), [history], n))

    assert banned(3) == {3, 4}
    assert banned(2) == {3, 4}  # after 2 came 3 and 4
    assert banned(1) == set(history)
    assert banned(4) == set()  # (0, 1, 2) never occurred before
    assert banned(0) == set()
    assert no_repeat_ngram(torch.zeros(1, 10), [[1, 2]], 3).isfinite().all()  # too short


def test_ban_sequences_and_tokens():
    x = torch.zeros(3, 6)
    tokens = [[4, 1, 2], [1, 2, 3], []]
    out = ban_sequences(x, tokens, [[1, 2, 5], [2, 4], [0]])
    assert set(range(6)) - kept(out[0:1]) == {5, 4, 0}  # ends with (1, 2) and with (2,)
    assert set(range(6)) - kept(out[1:2]) == {0}
    assert set(range(6)) - kept(out[2:3]) == {0}  # an empty history only meets one-token bans
    assert set(range(6)) - kept(ban_tokens(x, [1, 3])[1:2]) == {1, 3}
    with pytest.raises(ConfigError, match="empty sequence"):
        ban_sequences(x, tokens, [[]])


def test_min_new_tokens_bans_stops_only_in_young_rows():
    out = min_new_tokens(torch.zeros(3, 4), [0, 2, 3], min_new=3, stop_ids=[3, 1])
    assert [sorted(set(range(4)) - kept(out[r : r + 1])) for r in range(3)] == [[1, 3], [1, 3], []]
    assert min_new_tokens(torch.zeros(2, 4), 5, 3, [3]).isfinite().all()
    assert torch.isneginf(min_new_tokens(torch.zeros(2, 4), 0, 1, [3])[:, 3]).all()


def test_logit_bias_adds_and_rejects_ids_outside_the_vocabulary():
    out = logit_bias(torch.ones(2, 4), {1: -100.0, 3: 2.5})
    assert torch.equal(out, torch.tensor([[1.0, -99.0, 1.0, 3.5]] * 2))
    for bad in (4, -1):
        with pytest.raises(ConfigError, match=rf"token id {bad} .*vocab size 4"):
            logit_bias(torch.ones(2, 4), {bad: 1.0})


def test_every_function_returns_a_new_tensor_and_leaves_its_input_alone():
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    hist = [[1, 2, 1, 2], [3]]
    calls = [
        lambda: apply_temperature(x, 0.7), lambda: top_k_filter(x, 2), lambda: top_p_filter(x, 0.5),
        lambda: min_p_filter(x, 0.5), lambda: typical_filter(x, 0.5),
        lambda: repetition_penalty(x, hist, 1.3),
        lambda: presence_frequency_penalty(x, hist, 0.4, 0.3),
        lambda: no_repeat_ngram(x, hist, 2), lambda: logit_bias(x, {0: 1.0}),
        lambda: ban_tokens(x, [0]),
        lambda: ban_sequences(x, hist, [[2, 1]]), lambda: min_new_tokens(x, 0, 1, [7]),
    ]
    for call in calls:
        out = call()
        assert out.shape == x.shape and out.data_ptr() != x.data_ptr()
        assert not torch.equal(out, x)  # each call above does change something...
        assert torch.equal(x, before)  # ...but never in place


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "name, value",
    [
        ("temperature", -0.1), ("temperature", math.nan), ("top_k", -1), ("top_k", 2.5),
        ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 1.1), ("typical_p", 0.0),
        ("typical_p", 2.0), ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
        ("presence_penalty", 2.5), ("frequency_penalty", -2.1), ("no_repeat_ngram_size", -1),
        ("min_new_tokens", -3),
    ],
)
def test_validate_names_the_invalid_setting_and_its_range(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must be .*got {value!r}; use"):
        ProcessorSettings(**{name: value}).validate()


def test_validate_logit_bias_and_ids():
    with pytest.raises(ConfigError, match=r"logit_bias\[3\] must be in \[-100, 100\], got 101"):
        ProcessorSettings(logit_bias={3: 101}).validate()
    with pytest.raises(ConfigError, match="logit_bias: token id 9 .*vocab size 8"):
        ProcessorSettings(logit_bias={9: 1.0}).validate(vocab_size=8)
    with pytest.raises(ConfigError, match="banned_token_ids: token id 8 "):
        ProcessorSettings(banned_token_ids=[8]).validate(vocab_size=8)
    with pytest.raises(ConfigError, match="banned_sequences: token id 10 "):
        ProcessorSettings(banned_sequences=[[1, 10]]).validate(vocab_size=8)
    ProcessorSettings(logit_bias={9: 1.0}).validate()  # ids are only checked against a vocab
    ProcessorSettings(temperature=0, top_p=1.0, min_p=1.0, presence_penalty=-2).validate(8)


# ----------------------------------------------------------------------------- process


def test_process_with_defaults_returns_an_equal_copy():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(4))
    out = process(x, ProcessorSettings(), [[1, 2, 3]] * 3, [[3]] * 3, stop_ids=[0])
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_process_applies_temperature_before_top_p():
    x = torch.tensor([[2.0, 1.0, 0.0]])  # probs .665 .245 .090 at T=1
    cold = ProcessorSettings(temperature=0.5, top_p=0.7)  # .867 .117 .016
    assert kept(process(x, cold, [[]], [[]], [])) == {0}
    assert kept(top_p_filter(x, 0.7)) == {0, 1}  # what top_p before temperature would keep
    hot = ProcessorSettings(temperature=3.0, top_p=0.78)  # .448 .321 .230
    assert kept(process(x, hot, [[]], [[]], [])) == {0, 1, 2}
    assert kept(top_p_filter(x, 0.78)) == {0, 1}


def test_process_penalises_raw_logits_then_scales_then_truncates():
    x = torch.tensor([[4.0, 3.0, -1.0, 0.0]])
    s = ProcessorSettings(
        temperature=2.0, presence_penalty=1.0, repetition_penalty=2.0, logit_bias={3: 1.0}, top_k=3
    )
    out = process(x, s, tokens=[[1, 0, 2]], generated=[[0, 2]], stop_ids=[])
    # id 0: 4 / 2 (repetition) - 1 (presence) = 1, then / T = 0.5 (presence after T: 0)
    # id 1: in the prompt only: 3 / 2 = 1.5, / T = 0.75; id 2: (-1 * 2 - 1) / 2 = -1.5
    # id 3: 0 + 1 (bias) = 1, / T = 0.5; then top_k=3 drops id 2, the lowest
    assert torch.equal(out, torch.tensor([[0.5, 0.75, -INF, 0.5]]))


def test_process_applies_every_ban():
    s = ProcessorSettings(
        banned_token_ids=[1], banned_sequences=[[2, 0, 5]], min_new_tokens=2, no_repeat_ngram_size=2
    )
    out = process(torch.zeros(1, 6), s, tokens=[[0, 2, 0]], generated=[[0]], stop_ids=[3])
    # 1: banned id; 5: the history ends with (2, 0); 3: a stop before 2 new tokens; 2: (0, 2) again
    assert kept(out) == {0, 4}


def test_greedy_skips_the_filters_so_the_argmax_survives():
    x = torch.tensor([[0.5, 0.3, 0.2]]).log()
    s = ProcessorSettings(temperature=0, typical_p=0.2, top_k=1, top_p=0.5, min_p=0.5)
    assert torch.equal(process(x, s, [[]], [[]], []), x)
    assert kept(typical_filter(x, 0.2)) == {1}  # typical_p on the raw logits would drop the argmax


def test_a_row_with_every_token_banned_raises_and_says_why():
    s = ProcessorSettings(banned_token_ids=[0, 1], min_new_tokens=1, no_repeat_ngram_size=1)
    x = torch.zeros(2, 4)
    why = r"sequence 1 .*banned_token_ids bans 2, min_new_tokens bans 1, no_repeat_ngram_size bans 1"
    with pytest.raises(ConfigError, match=why):
        process(x, s, tokens=[[0], [2]], generated=[[0], []], stop_ids=[3])
    process(x, s, tokens=[[0], [2]], generated=[[0], [2]], stop_ids=[3])  # row 1 may stop now


def test_process_checks_settings_and_row_counts():
    with pytest.raises(ConfigError, match="top_p"):
        process(torch.zeros(1, 3), ProcessorSettings(top_p=2.0), [[]], [[]], [])
    with pytest.raises(ValueError, match="tokens has 2 rows but logits has 1"):
        process(torch.zeros(1, 3), ProcessorSettings(), [[], []], [[]], [])


# ----------------------------------------------------------------------------- Hugging Face


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_matches_hugging_face_processors(seed):
    lp = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 30, generator=g, dtype=torch.float64) * 3
    ids = torch.randint(0, 6, (3, 12), generator=g)  # a small alphabet so n-grams repeat
    hist = ids.tolist()
    for ours, theirs in [
        (top_k_filter(x, 5), lp.TopKLogitsWarper(5)(ids, x)),
        (top_p_filter(x, 0.8), lp.TopPLogitsWarper(0.8)(ids, x)),
        (min_p_filter(x, 0.1), lp.MinPLogitsWarper(0.1)(ids, x)),
        (typical_filter(x, 0.6), lp.TypicalLogitsWarper(0.6)(ids, x)),
        (repetition_penalty(x, hist, 1.7),
         lp.RepetitionPenaltyLogitsProcessor(1.7)(ids, x.clone())),
        (no_repeat_ngram(x, hist, 2), lp.NoRepeatNGramLogitsProcessor(2)(ids, x)),
        (ban_sequences(x, hist, [[hist[0][-1], 7], [9]]),
         lp.NoBadWordsLogitsProcessor([[hist[0][-1], 7], [9]], eos_token_id=29)(ids, x)),
    ]:
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])  # flat to peaked: nuclei of every size
def test_top_p_and_typical_match_hugging_face_on_a_large_vocabulary(scale):
    lp = pytest.importorskip("transformers.generation.logits_process")
    x = torch.randn(4, 5000, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * scale
    ids = torch.zeros(4, 1, dtype=torch.long)
    for p in (0.2, 0.9, 0.99):
        assert torch.equal(top_p_filter(x, p), lp.TopPLogitsWarper(p)(ids, x))
        assert torch.equal(typical_filter(x, p), lp.TypicalLogitsWarper(p)(ids, x))
