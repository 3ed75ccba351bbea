"""Chat templates: turn a list of messages into the prompt text a chat model was trained on.

Templates are the Jinja2 programs that ship with models (`tokenizer_config.json`, GGUF's
`tokenizer.chat_template`). They come from files downloaded from strangers, so they run
in Jinja2's immutable sandbox: no attribute access to Python internals, no file or
network access. A model without a template (a base model trained here) gets a plain
"User:/Assistant:" layout, so `chat` still works on it.

The environment matches the one Hugging Face `transformers` renders templates in, so a
prompt here is the prompt the model was trained on (tests/test_tokenizer_parity.py checks
it): `tojson` keeps text as typed and keys in their order (Jinja's own escapes `<`, `>`,
`&`, `'` for HTML and sorts keys), and `{% generation %}` blocks (they mark the assistant's
text for training masks) render their body.

Roles are system, user, assistant, tool and `developer`, OpenAI's newer name for system
instructions. Few templates know the word, and those that do not print it as a role the
model never saw (ChatML) or drop the message (Qwen2.5), so a developer message is
rendered as a system message, unless the template names the role itself (gpt-oss does).

`encode_chat` turns a conversation into token ids. Special tokens (`<|im_start|>`, …) come
only from the template's own text: a message whose content spells one ("hi<|im_end|>
<|im_start|>system …") gets ordinary tokens for that text, so no user can forge a role or
end a turn. How: the prompt is rendered a second time with every special-token text in
the contents replaced by placeholders of the same length; a special token of the real
prompt is the template's only if the second rendering has it at the same place.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from datetime import datetime

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from centelha.errors import CentelhaError

PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "developer", "user", "assistant", "tool")
# a template that compares a role with "developer" renders that role itself
NAMES_DEVELOPER = re.compile(r"""["']developer["']""")


def _raise(message: str):
    raise CentelhaError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None,
            sort_keys: bool = False) -> str:
    """JSON as model templates expect it: text as typed, keys in their order (see above)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`: its body, in a scope of its own."""

    tags = {"generation"}

    def parse(self, parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=["jinja2.ext.loopcontrols", _GenerationBlock])
    env.filters["tojson"] = _tojson
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
    template = template or PLAIN_TEMPLATE
    if not NAMES_DEVELOPER.search(template):
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m
                    for m in messages]
    try:
        compiled = ENV.from_string(template)
        return compiled.render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=add_generation_prompt, tools=None)
    except CentelhaError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError) as e:
        raise CentelhaError(f"the chat template failed: {e}") from None


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the conversation rendered by `tokenizer`'s chat template (no BOS added),
    where message contents never become special tokens."""
    def render(conversation: list[dict]) -> str:
        return render_chat(tokenizer.chat_template, conversation, tokenizer.bos_token,
                           tokenizer.eos_token, add_generation_prompt)

    text = render(messages)
    ids, offsets = tokenizer.encode_with_offsets(text, allow_special=True)
    specials = tokenizer.special_ids
    contents = [m["content"] for m in messages]
    if not any(token in content for content in contents for token in specials):
        return ids  # nothing in the contents can be mistaken for a special token
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))
    placeholders = [{**m, "content": pattern.sub(lambda hit: "\ue000" * len(hit[0]), m["content"])}
                    for m in messages]
    by_template = same_place(text, render(placeholders))
    out = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        if token in tokenizer.special_tokens and not by_template(start, end):
            out += tokenizer.encode(text[start:end])  # the same text, as ordinary tokens
        else:
            out.append(token)
    return out


def same_place(text: str, reference: str) -> Callable[[int, int], bool]:
    """Whether text[start:end] equals `reference` at the same place. With placeholders of
    the same length, that is all of `text` outside them; a template that changes the
    contents' lengths is aligned by difflib instead (slower, and rarely needed)."""
    if len(text) == len(reference):
        return lambda start, end: text[start:end] == reference[start:end]
    matcher = difflib.SequenceMatcher(None, text, reference, autojunk=False)
    blocks = matcher.get_matching_blocks()
    return lambda start, end: any(a <= start and end <= a + size for a, _, size in blocks)
