"""Chat templates: turn a list of messages into the prompt text a chat model was trained on.

Templates are the Jinja2 programs that ship with models (`tokenizer_config.json`, GGUF's
`tokenizer.chat_template`). They come from files downloaded from strangers, so they run
in Jinja2's immutable sandbox: no attribute access to Python internals, no file or
network access. A model without a template (a base model trained here) gets a plain
"User:/Assistant:" layout, so `chat` still works on it.
"""

from __future__ import annotations

from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from centelha.errors import CentelhaError

PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool")


def _raise(message: str):
    raise CentelhaError(f"the chat template refused the conversation: {message}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


ENV = _environment()


def check_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise CentelhaError("a conversation needs at least one message")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise CentelhaError("each message needs a string 'content'")
        if m.get("role") not in ROLES:
            raise CentelhaError(f"unknown role {m.get('role')!r} (use {', '.join(ROLES)})")


def render_chat(template: str | None, messages: list[dict], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages`, ready for the model to write the next turn."""
    check_messages(messages)
    try:
        compiled = ENV.from_string(template or PLAIN_TEMPLATE)
        return compiled.render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=add_generation_prompt, tools=None)
    except CentelhaError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError) as e:
        raise CentelhaError(f"the chat template failed: {e}") from None
