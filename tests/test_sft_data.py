"""SFT data (issue 12, part 5): the assistant-token mask is exactly right for any template.

Three templates on tiny byte-level BPEs: multi-turn ChatML (the conftest chat model's
tokenizer), Llama 3 style (header blocks, BOS, a dated system turn, trimmed contents) and
Qwen2.5 style (a default system prompt when the conversation has none), the last two from
tests/test_tokenizer_parity.py. Scored tokens must decode, turn by turn, to exactly the
assistant contents plus the end-of-turn token, and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_tokenizer_parity import llama3_folder, qwen2_folder

from centelha.errors import CentelhaError
from centelha.finetune.sft_data import (
    IGNORE,
    SFTExample,
    assistant_mask,
    collate,
    load_sft,
    pack,
    read_conversations,
    to_example,
)
from centelha.formats.hf.tokenizer import load_hf_tokenizer
from centelha.template import render_chat
from centelha.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "Responda com brevidade."},
    {"role": "user", "content": "Quanto é 2 + 2?"},
    {"role": "assistant", "content": "Quatro."},
    {"role": "user", "content": "E escrito por extenso em inglês?"},
    {"role": "assistant", "content": "Four, ou seja, 4."},
]
WITHOUT_SYSTEM = CONVERSATION[1:]


@pytest.fixture(scope="module")
def chatml(tiny_chat_llm) -> Tokenizer:
    return tiny_chat_llm.tokenizer


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> Tokenizer:
    return load_hf_tokenizer(llama3_folder(tmp_path_factory.mktemp("llama3") / "tok"))


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Tokenizer:
    return load_hf_tokenizer(qwen2_folder(tmp_path_factory.mktemp("qwen2") / "tok"))


def with_template(tokenizer: Tokenizer, template: str | None) -> Tokenizer:
    """The same vocabulary under another chat template."""
    return Tokenizer(tokenizer.hf, {**tokenizer.config, "chat_template": template})


def scored_spans(tokenizer: Tokenizer, ids: list[int], mask: list[bool]) -> list[str]:
    """The text of each run of scored tokens."""
    spans, current = [], []
    for token, scored in zip(ids, mask, strict=True):
        if scored:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


# -- the mask, template by template ------------------------------------------------------------
def test_chatml_multi_turn_scores_each_answer_and_its_end_token(chatml):
    ids, mask = assistant_mask(chatml, CONVERSATION)
    assert chatml.decode(ids) == render_chat(chatml.chat_template, CONVERSATION,
                                             add_generation_prompt=False)
    assert scored_spans(chatml, ids, mask) == ["Quatro.<|im_end|>", "Four, ou seja, 4.<|im_end|>"]
    end = chatml.special_ids["<|im_end|>"]
    for k, token in enumerate(ids):
        if token == end and mask[k]:
            # the newline ChatML writes after <|im_end|> is input, never a target
            assert chatml.decode([ids[k + 1]]) == "\n" and not mask[k + 1]


def test_llama3_scores_trimmed_answers_and_eot_but_not_headers_or_bos(llama3):
    padded = [*CONVERSATION[:2], {"role": "assistant", "content": "  Quatro. "},
              *CONVERSATION[3:]]
    for conversation in (padded, WITHOUT_SYSTEM):
        ids, mask = assistant_mask(llama3, conversation)
        assert ids[0] == llama3.bos_id and ids.count(llama3.bos_id) == 1
        # the template trims contents: what is scored is what the template wrote
        assert scored_spans(llama3, ids, mask) == ["Quatro.<|eot_id|>",
                                                   "Four, ou seja, 4.<|eot_id|>"]
        text = llama3.decode(t for t, m in zip(ids, mask, strict=True) if not m)
        assert "Cutting Knowledge Date" in text and "Quanto é 2 + 2?" in text


def test_default_system_prompt_is_never_scored(qwen2):
    ids, mask = assistant_mask(qwen2, WITHOUT_SYSTEM)
    assert "Você é um assistente prestativo." in qwen2.decode(ids)
    assert scored_spans(qwen2, ids, mask) == ["Quatro.<|im_end|>", "Four, ou seja, 4.<|im_end|>"]
    ids, mask = assistant_mask(qwen2, CONVERSATION)
    assert "prestativo" not in qwen2.decode(ids)
    assert "Responda com brevidade." in qwen2.decode(ids)
    assert len(scored_spans(qwen2, ids, mask)) == 2


def test_content_that_spells_the_end_token_stays_text(qwen2):
    """Only the template's own <|im_end|> is the special token, and only it ends the span."""
    conversation = [{"role": "user", "content": "Como termino?"},
                    {"role": "assistant", "content": "Com <|im_end|> no fim."}]
    ids, mask = assistant_mask(qwen2, conversation)
    assert scored_spans(qwen2, ids, mask) == ["Com <|im_end|> no fim.<|im_end|>"]
    scored = [t for t, m in zip(ids, mask, strict=True) if m]
    assert scored.count(qwen2.special_ids["<|im_end|>"]) == 1 and scored[-1] == \
        qwen2.special_ids["<|im_end|>"]


def test_plain_template_scores_the_closing_newline(chatml):
    """No special tokens in the layout: the newline is how a turn ends, so it is scored."""
    plain = with_template(chatml, None)
    ids, mask = assistant_mask(plain, WITHOUT_SYSTEM)
    assert scored_spans(plain, ids, mask) == [" Quatro.\n", " Four, ou seja, 4.\n"]


def test_messages_after_the_last_answer_are_dropped(chatml):
    ids, _ = assistant_mask(chatml, [*WITHOUT_SYSTEM, {"role": "user", "content": "Obrigado"}])
    assert "Obrigado" not in chatml.decode(ids)


# -- templates the mask cannot be trusted on ---------------------------------------------------
REWRITES_HISTORY = (  # strips the reasoning from every answer but the last
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_ANSWERS = ("{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}\n"
              "{% endif %}{% endfor %}")


def test_a_template_that_rewrites_earlier_turns_is_refused(chatml, tmp_path):
    tokenizer = with_template(chatml, REWRITES_HISTORY)
    think = [{"role": "user", "content": "2 + 2?"},
             {"role": "assistant", "content": "<think>dois e dois</think>Quatro."}]
    ids, mask = assistant_mask(tokenizer, think)  # one answer: nothing is rewritten
    assert scored_spans(tokenizer, ids, mask) == ["<think>dois e dois</think>Quatro.<|im_end|>"]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": think}, {"messages": think * 2}])
    with pytest.raises(CentelhaError, match=rf"^{path}:2: assistant turn 1 does not tokenize"):
        load_sft(path, tokenizer)


def test_an_empty_mask_is_refused_with_its_line(chatml, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["", {"messages": WITHOUT_SYSTEM}])
    with pytest.raises(CentelhaError, match=rf"^{path}:2: the chat template renders no "):
        load_sft(path, with_template(chatml, NO_ANSWERS))


# -- reading files -------------------------------------------------------------------------------
GOOD = {"messages": WITHOUT_SYSTEM}


@pytest.mark.parametrize(("line", "says"), [
    ('{"messages": [', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"text": "oi"}', 'needs a non-empty list "messages"'),
    ('{"messages": []}', 'needs a non-empty list "messages"'),
    ({"messages": [{"role": "bot", "content": "oi"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, "string 'content'"),
    ({"messages": [{"role": "user", "content": "oi"}]}, "no assistant message"),
    ({"messages": [{"role": "assistant", "content": "oi"}]}, "starts with an assistant"),
    ("[" * 100_000, "not valid JSON"),
])
def test_bad_lines_get_one_line_errors_naming_file_and_line(tmp_path, line, says):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, line])
    with pytest.raises(CentelhaError) as error:
        read_conversations(path)
    assert str(error.value).startswith(f"{path}:2: ") and says in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(CentelhaError, match="file not found"):
        read_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(CentelhaError, match="no conversations"):
        read_conversations(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"messages": "ação"}'.encode("latin-1"))
    with pytest.raises(CentelhaError, match="not UTF-8"):
        read_conversations(tmp_path / "latin1.jsonl")


def test_a_line_separator_inside_a_string_is_not_a_new_line(tmp_path):
    messages = [{"role": "user", "content": "a\u2028b"}, {"role": "assistant", "content": "c"}]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": messages}, ensure_ascii=False) + "\n", "utf-8")
    [conversation] = read_conversations(path)
    assert conversation.messages == messages and conversation.where == f"{path}:1"


# -- what the training loop gets -----------------------------------------------------------------
def test_targets_follow_the_model_convention(tiny_chat_llm, chatml):
    """targets[t] is the token after ids[t]: the model's loss on the example is exactly the
    mean cross-entropy of predicting each assistant token from what precedes it."""
    tokens, mask = assistant_mask(chatml, CONVERSATION)
    example = to_example(tokens, mask, "x")
    assert example.ids == tokens[:-1] and len(example.targets) == len(example.ids)
    for t, target in enumerate(example.targets):  # each target is the next token, or none
        assert target == (tokens[t + 1] if mask[t + 1] else IGNORE)
    ids = torch.tensor([example.ids])
    with torch.no_grad():
        logits, loss = tiny_chat_llm.model(ids, torch.tensor([example.targets]))
    positions = [k - 1 for k, m in enumerate(mask) if m]
    expected = F.cross_entropy(logits[0, positions].float(),
                               torch.tensor([tokens[k + 1] for k in positions]))
    assert torch.allclose(loss, expected)
    assert example.scored == sum(mask)


def fake(size: int, start: int) -> SFTExample:
    """An example whose ids and targets say which example and position they are."""
    ids = list(range(start, start + size))
    return SFTExample(ids, [i + 1 if i % 2 else IGNORE for i in ids], f"f:{start}")


def test_packing_keeps_whole_examples_and_their_targets_aligned():
    examples = [fake(5, 100), fake(4, 200), fake(3, 300), fake(2, 400), fake(6, 500)]
    ids, targets = pack(examples, block_size=8, pad_id=0)
    assert ids.shape == targets.shape == (3, 8) and ids.dtype == targets.dtype == torch.long
    # first fit in file order: [5 + 3], [4 + 2], [6]
    rows = [[100, 101, 102, 103, 104, 300, 301, 302], [200, 201, 202, 203, 400, 401, 0, 0],
            [500, 501, 502, 503, 504, 505, 0, 0]]
    assert ids.tolist() == rows
    by_id = {i: t for e in examples for i, t in zip(e.ids, e.targets, strict=True)}
    expected = [[by_id.get(i, IGNORE) if i else IGNORE for i in row] for row in rows]
    assert targets.tolist() == expected


def test_packing_real_examples_loses_no_scored_token(chatml, tmp_path):
    lines = [{"messages": CONVERSATION}, {"messages": WITHOUT_SYSTEM[:2]}, GOOD]
    examples = load_sft(write_jsonl(tmp_path / "d.jsonl", lines), chatml)
    block = max(len(examples[0].ids), len(examples[1].ids) + len(examples[2].ids))
    ids, targets = pack(examples, block_size=block, pad_id=chatml.eos_id)
    assert ids.shape[1] == block and ids.shape[0] < len(examples)
    assert int((targets != IGNORE).sum()) == sum(e.scored for e in examples)
    kept = [t for row in targets.tolist() for t in row if t != IGNORE]
    assert sorted(kept) == sorted(t for e in examples for t in e.targets if t != IGNORE)


def test_too_long_examples_are_refused_not_truncated(chatml, tmp_path):
    with pytest.raises(CentelhaError, match="^f:7: 9 positions do not fit in a row of "
                                            "block_size 8$"):
        pack([fake(3, 1), fake(9, 7)], block_size=8)
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"messages": CONVERSATION}])
    short = len(load_sft(path, chatml)[0].ids)
    with pytest.raises(CentelhaError, match=rf"^{path}:2: \d+ tokens, more than block_size"):
        load_sft(path, chatml, block_size=short)


def test_collate_pads_on_the_right_without_scoring_padding():
    ids, targets = collate([fake(3, 10), fake(5, 20)], pad_id=7)
    assert ids.tolist() == [[10, 11, 12, 7, 7], [20, 21, 22, 23, 24]]
    assert targets.tolist() == [[IGNORE, 12, IGNORE, IGNORE, IGNORE],
                                [IGNORE, 22, IGNORE, 24, IGNORE]]
