from __future__ import annotations

import pytest

from edgekit.generation import ChatTemplate, ChatTemplateError, TextTokenizer
from edgekit.sources import open_checkpoint
from edgekit.testing.tiny import CHATML_TEMPLATE

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ça va? 😀"}]


def test_chatml_with_generation_prompt():
    text = ChatTemplate(CHATML_TEMPLATE).render(MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nÇa va? 😀<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not ChatTemplate(CHATML_TEMPLATE).render(MESSAGES, add_generation_prompt=False).endswith("assistant\n")


def test_raise_exception_becomes_a_clear_error():
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}"
        "{% endif %}{{ bos_token }}{{ messages[0]['content'] }}"
    )
    with pytest.raises(ChatTemplateError, match="Conversation must start with user"):
        ChatTemplate(template, {"bos_token": "<s>"}).render(MESSAGES)
    assert ChatTemplate(template, {"bos_token": "<s>"}).render(MESSAGES[1:]) == "<s>Ça va? 😀"


def test_tojson_keeps_unicode_and_sandbox_blocks_attributes():
    assert ChatTemplate("{{ messages | tojson }}").render(MESSAGES[1:]) == '[{"role": "user", "content": "Ça va? 😀"}]'
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(MESSAGES)


def test_syntax_error_is_reported():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")


def test_tokenizer_applies_template_without_extra_specials(tiny_models):
    checkpoint = open_checkpoint(tiny_models["llama"])
    tok = TextTokenizer(checkpoint.tokenizer, checkpoint.eos_token_ids)
    ids = tok.apply_chat_template(MESSAGES)
    assert tok.decode(ids, skip_special_tokens=False) == ChatTemplate(CHATML_TEMPLATE).render(MESSAGES)
    assert set(tok.eos_token_ids) == {2}
