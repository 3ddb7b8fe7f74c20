"""Chat templates render exactly as Hugging Face `apply_chat_template` does; bad input is a
ConfigError naming the field."""

from __future__ import annotations

import json

import pytest

from lmstack.errors import ConfigError
from lmstack.models.directory import model_chat_template
from lmstack.tokenizer.chat_template import (
    DEFAULT_TEMPLATE,
    ChatTemplate,
    validate_messages,
)

# A Llama-2/Zephyr-style template written for this test: the system message folded into the
# first user turn, bos/eos around each exchange, alternation enforced with raise_exception,
# and layout newlines that only disappear thanks to trim_blocks/lstrip_blocks.
LLAMA_STYLE = """
{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set turns = messages[1:] %}
{% else %}
    {% set system = '' %}
    {% set turns = messages %}
{% endif %}
{% for message in turns %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('roles must alternate user/assistant/user/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {% if loop.first and system %}
{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] | trim + ' [/INST]' }}
        {% else %}
{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}
        {% endif %}
    {% else %}
{{ ' ' + message['content'] | trim + ' ' + eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ '' }}{% endif %}
"""

ZEPHYR_STYLE = (
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  Hi there  "},
    {"role": "assistant", "content": "Hello. 你好 <b>&</b>"},
    {"role": "user", "content": "Bye\n"},
]


def hf_tokenizer(template: str):
    """A tiny HF fast tokenizer carrying the template (no download: a word-level model)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_start|>": 3, "<|im_end|>": 4}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=word_level,
                                   chat_template=template, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, LLAMA_STYLE, ZEPHYR_STYLE],
                         ids=["chatml", "llama", "zephyr"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_renders_what_transformers_renders(template, generation_prompt):
    ours = ChatTemplate(template, bos_token="<s>", eos_token="</s>")
    expected = hf_tokenizer(template).apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=generation_prompt)
    got = ours.render(CONVERSATION, add_generation_prompt=generation_prompt)
    assert got == expected
    assert got.count("Hi there") == 1


def test_default_template_is_chatml():
    text = ChatTemplate().render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_content_parts_render_as_text():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert ChatTemplate().render(parts) == ChatTemplate().render([{"role": "user", "content": "a\nb"}])


def model_dir(path):
    """A directory load_model's registry takes for a model (the template files are beside it)."""
    (path / "config.json").write_text(json.dumps({"model_type": "gru", "vocab_size": 8}))
    return path


def test_from_model_reads_template_and_tokens(tmp_path):
    model_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": ZEPHYR_STYLE, "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>"}))
    t = model_chat_template(tmp_path)
    assert (t.source, t.bos_token, t.eos_token) == (ZEPHYR_STYLE, "<s>", "</s>")
    assert t.render([{"role": "user", "content": "Hi"}]) == "<|user|>\nHi</s>\n<|assistant|>\n"


def test_from_model_without_config_is_chatml(tmp_path):
    model_dir(tmp_path)
    assert model_chat_template(tmp_path).source == DEFAULT_TEMPLATE
    (tmp_path / "chat_template.jinja").write_text(ZEPHYR_STYLE)  # newer HF saves it on its own
    assert model_chat_template(tmp_path).source == ZEPHYR_STYLE


def test_stop_tokens_end_the_assistant_turn(tok):
    ids = ChatTemplate().stop_tokens(tok)
    assert ids == sorted({tok.special_tokens["<|im_end|>"], tok.special_tokens["<|endoftext|>"]})

    class Specials:  # a tokenizer whose end of turn is its eos, as in Zephyr
        special_tokens = {"</s>": 2, "<|user|>": 7, "<eot>": 9}

    assert ChatTemplate(ZEPHYR_STYLE, eos_token="</s>").stop_tokens(Specials()) == [2]
    # The end-of-turn marker is found from what the template writes after a reply.
    eot = "{% for m in messages %}{{ m['content'] + '<eot>' }}{% endfor %}"
    assert ChatTemplate(eot, eos_token="</s>").stop_tokens(Specials()) == [2, 9]
    assert ChatTemplate().stop_tokens(None) == []


@pytest.mark.parametrize("messages,param,words", [
    ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "messages[1].role",
     "must be one of"),
    ([{"role": "user"}], "messages[0].content", "is required"),
    ([{"role": "user", "content": 3}], "messages[0].content", "string or a list"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[2].content[0].type", "text only"),
    ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text", "string"),
    ("hello", "messages", "non-empty list"),
    ([], "messages", "non-empty list"),
    (["hi"], "messages[0]", "must be an object"),
])
def test_bad_messages_name_the_field(messages, param, words):
    with pytest.raises(ConfigError) as info:
        validate_messages(messages)
    assert info.value.param == param
    assert str(info.value).startswith(param + " ") and words in str(info.value)


def test_template_refusal_is_a_config_error():
    t = ChatTemplate(LLAMA_STYLE)
    with pytest.raises(ConfigError, match="refused the messages: roles must alternate") as info:
        t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert info.value.param == "messages"


def test_broken_templates_are_config_errors():
    with pytest.raises(ConfigError, match="syntax error at line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ConfigError, match="failed while rendering"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "a"}])
    with pytest.raises(ConfigError, match="unsafe"):  # the sandbox: no mutation of our objects
        ChatTemplate("{{ messages.append(1) }}").render([{"role": "user", "content": "a"}])


def test_template_helpers_exist():
    out = ChatTemplate("{{ strftime_now('%Y') }} {{ tools }} {{ {'a': '<'} | tojson }}").render(
        [{"role": "user", "content": "a"}])
    year, tools, js = out.split(" ", 2)
    assert year.isdigit() and tools == "None" and js == '{"a": "<"}'
