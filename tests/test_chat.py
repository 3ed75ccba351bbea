"""Chat templates (sandboxed) and the chat session behind `centelha chat`."""

import pytest
import torch

from centelha.api import LLM
from centelha.chat import ChatSession
from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.template import check_messages, render_chat
from centelha.tokenizer import Tokenizer, train_bpe
from tests.conftest import tiny_config

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chatml_template_renders():
    text = render_chat(CHATML, [{"role": "system", "content": "Seja breve."},
                                {"role": "user", "content": "Olá!"}])
    assert text == ("<|im_start|>system\nSeja breve.<|im_end|>\n<|im_start|>user\nOlá!<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_without_a_template_a_plain_layout_is_used():
    text = render_chat(None, [{"role": "user", "content": "oi"}])
    assert text == "User: oi\nAssistant:"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{% set x = messages.append(1) %}",
])
def test_templates_run_in_a_sandbox(template):
    with pytest.raises(CentelhaError, match="chat template"):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_raise_exception_in_a_template_is_a_clear_error():
    template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(CentelhaError, match="roles must alternate"):
        render_chat(template, [{"role": "user", "content": "x"}])


def test_a_developer_message_is_a_system_message():
    """OpenAI's newer name for system instructions; ChatML has no such role."""
    developer = [{"role": "developer", "content": "Seja breve."}, {"role": "user", "content": "Oi"}]
    system = [{"role": "system", "content": "Seja breve."}, developer[1]]
    check_messages(developer)
    for template in (CHATML, None):
        assert render_chat(template, developer) == render_chat(template, system)
    assert "<|im_start|>system\nSeja breve." in render_chat(CHATML, developer)
    assert developer[0]["role"] == "developer"  # the caller's messages are left alone


def test_a_template_that_names_the_developer_role_renders_it():
    template = ("{% for m in messages %}{% if m['role'] == \"developer\" %}[dev]"
                "{% else %}[{{ m['role'] }}]{% endif %}{{ m['content'] }}{% endfor %}")
    text = render_chat(template, [{"role": "developer", "content": "a"},
                                  {"role": "system", "content": "b"}])
    assert text == "[dev]a[system]b"


@pytest.mark.parametrize("messages", [[], [{"role": "robot", "content": "x"}],
                                      [{"role": "user"}], ["texto"]])
def test_bad_messages_are_refused(messages):
    with pytest.raises(CentelhaError):
        render_chat(None, messages)


@pytest.fixture(scope="module")
def llm():
    base = train_bpe(["<|im_start|>user\nOlá, tudo bem?<|im_end|>\n" * 20], vocab_size=300,
                     special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tokenizer = Tokenizer(base.hf, {"chat_template": CHATML, "eos_token": "<|im_end|>"})
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size, block_size=256))
    return LLM(model.eval(), tokenizer)


def test_session_keeps_history_and_handles_commands(llm):
    session = ChatSession(llm, max_new_tokens=8, temperature=0)
    reply = session.handle("Olá!")
    assert reply.kind == "stream"
    answer = "".join(reply.pieces)
    assert session.history == [{"role": "user", "content": "Olá!"},
                               {"role": "assistant", "content": answer.strip()}]
    assert session.handle("/system Responda em português.").kind == "notice"
    assert session.history == [] and session.system == "Responda em português."
    assert session.messages()[0] == {"role": "system", "content": "Responda em português."}
    assert session.handle("/set temperature 0.3").text == "temperature = 0.3"
    assert session.settings["temperature"] == 0.3
    "".join(session.handle("de novo").pieces)
    assert len(session.history) == 2
    assert session.handle("/reset").kind == "notice" and session.history == []
    assert session.handle("/exit").kind == "exit"


@pytest.mark.parametrize("line", ["/set temperature -1", "/set nothing 1", "/set top_p",
                                  "/frobnicate"])
def test_bad_commands_are_clear_errors(llm, line):
    with pytest.raises(CentelhaError):
        ChatSession(llm).handle(line)


def test_greedy_chat_is_deterministic(llm):
    messages = [{"role": "user", "content": "Olá, tudo bem?"}]
    assert llm.chat(messages, max_new_tokens=10, temperature=0) == \
        llm.chat(messages, max_new_tokens=10, temperature=0)
