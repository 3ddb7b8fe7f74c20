"""Beam search against HF transformers' `generate(num_beams=...)` on the same weights.

A tiny random GPT-2 is built from a config here, saved, and imported with `load_hf_model`; both
sides then search with the same num_beams, length_penalty, early_stopping,
num_return_sequences and max_new_tokens, with no eos or with an eos the model does produce.
The returned tokens must be equal and the scores (`sequences_scores`) equal to float32 rounding.

Intended divergences, not exercised here: HF also takes `early_stopping="never"` (lmstack's is a
bool); ties between equal scores go to the lowest (beam, token) index in lmstack and to whatever
order `torch.topk` returns in HF; lmstack adds log-probabilities in float64, HF in float32, so a
near-tie (|difference| ~1e-7) may break differently.

Run: `.venv/bin/python -m pytest -q tests/infer/test_beam_hf.py`.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the dev extra; always installed in CI

from lmstack.infer import Engine  # noqa: E402
from lmstack.interop import load_hf_model  # noqa: E402

V = 24
MAX_NEW = 8
# (model seed, prompt, (num_beams, num_return_sequences)): all beams returned, or a subset.
CASES = [(1, [1, 2, 3], (3, 3)), (2, [5], (4, 2))]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """Seed -> (HF model, our import of it). Weights are drawn wide (std 0.3) so that the
    next-token distributions are peaked and near-ties are rare."""
    out = {}
    for seed in sorted({seed for seed, _, _ in CASES}):
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, initializer_range=0.3,
                                      bos_token_id=None, eos_token_id=None)
        theirs = transformers.GPT2LMHeadModel(cfg).eval()
        d = tmp_path_factory.mktemp(f"gpt2-{seed}")
        theirs.save_pretrained(d)
        out[seed] = theirs, load_hf_model(d)
    return out


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def hf_beams(model, prompt: list[int], eos: int | None, **kw) -> list[tuple[list[int], float, bool]]:
    """HF's (generated tokens up to the eos, score, ended in eos) per returned sequence."""
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos,
                         pad_token_id=eos if eos is not None else 0, return_dict_in_generate=True,
                         output_scores=True, **kw)
    result = []
    for seq, score in zip(out.sequences.tolist(), out.sequences_scores.tolist()):
        gen = seq[len(prompt):]
        ended = eos is not None and eos in gen
        result.append((gen[:gen.index(eos)] if ended else gen, score, ended))
    return result


def our_beams(model, prompt: list[int], eos: int | None, **kw) -> list[tuple[list[int], float, bool]]:
    stop = dict(stop_token_ids=[eos]) if eos is not None else dict(ignore_eos=True)
    got = Engine(model).generate(prompt, max_new_tokens=MAX_NEW, **stop, **kw)
    return [(c.tokens, c.score, c.finish_reason == "stop") for c in (got if isinstance(got, list) else [got])]


def pick_eos(model, prompt: list[int], where: str) -> int | None:
    """No eos, or the greedy path's 2nd or 3rd token as eos: one the search will meet."""
    return None if where == "none" else hf_greedy(model, prompt, 3)[{"early": 1, "late": 2}[where]]


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("eos_at", ["none", "early", "late"])
def test_beam_search_matches_transformers(pairs, early_stopping, length_penalty, eos_at):
    ended = 0
    for seed, prompt, (num_beams, m) in CASES:
        theirs, ours = pairs[seed]
        eos = pick_eos(theirs, prompt, eos_at)
        kw = dict(num_beams=num_beams, num_return_sequences=m, length_penalty=length_penalty,
                  early_stopping=early_stopping)
        want, got = hf_beams(theirs, prompt, eos, **kw), our_beams(ours, prompt, eos, **kw)
        case = f"seed {seed}, prompt {prompt}, eos {eos}, {kw}"
        assert [(t, e) for t, _, e in got] == [(t, e) for t, _, e in want], case
        assert [s for _, s, _ in got] == pytest.approx([s for _, s, _ in want], abs=1e-5), case
        ended += sum(e for _, _, e in want)
    # The premise: with an eos, some of the returned hypotheses do end in it.
    assert (ended > 0) == (eos_at != "none")


def test_the_settings_change_the_answer(pairs):
    # The premise of the comparison: early_stopping and length_penalty each change HF's result
    # in one of the cases, so a search that ignored either would fail the test above.
    seed, prompt, (num_beams, m) = CASES[0]
    theirs, _ = pairs[seed]
    eos = pick_eos(theirs, prompt, "late")
    tokens = {(es, lp): [t for t, _, _ in hf_beams(theirs, prompt, eos, num_beams=num_beams, num_return_sequences=m,
                                                   length_penalty=lp, early_stopping=es)]
              for es in (True, False) for lp in (0.5, 2.0)}
    assert tokens[True, 2.0] != tokens[False, 2.0]
    assert tokens[True, 0.5] != tokens[True, 2.0]
