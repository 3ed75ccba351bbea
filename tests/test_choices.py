"""`centelha.choices`: n choices of one prompt on an engine, as the server runs them.

Against the tiny random chat model: greedy choices equal the library's greedy output,
seeded choices differ from each other and are reproducible (choice i is seed + i),
log-probabilities are the log-softmax of the raw logits whatever the sampling settings,
and a stop string ends its choice and frees its row."""

from __future__ import annotations

import pytest
import torch

from centelha.choices import choice_samplings, complete, openai_sampling
from centelha.engine import Engine, Request
from centelha.errors import CentelhaError
from centelha.generate import prompt_ids
from centelha.sampling import SamplingConfig

PROMPT = "Era uma vez"


@pytest.fixture()
def engine(tiny_chat_llm) -> Engine:
    return Engine(tiny_chat_llm.model, max_batch=4, max_len=tiny_chat_llm.max_context,
                  vocab_size=tiny_chat_llm.tokenizer.vocab_size)


def ids_of(llm, text: str = PROMPT) -> list[int]:
    return prompt_ids(llm.tokenizer, text)


def test_greedy_choices_equal_the_library_s_greedy_output(tiny_chat_llm, engine):
    llm = tiny_chat_llm
    greedy = SamplingConfig(max_new_tokens=24, temperature=0)
    expected_text = llm.generate(PROMPT, max_new_tokens=24, temperature=0)
    expected_ids = [t.token for t in llm.engine.stream(
        Request(ids_of(llm), greedy, frozenset(llm.tokenizer.stop_ids)))]
    # together in a 4-row engine, and one after the other in LLM's one-row engine
    for runner in (engine, llm.engine):
        choices = complete(runner, llm.tokenizer, ids_of(llm), greedy, n=2)
        assert [c.index for c in choices] == [0, 1]
        for choice in choices:
            assert choice.text == expected_text and choice.token_ids == expected_ids
            assert choice.finish_reason == "length" and choice.logprobs is None
        assert not runner.active


def test_seeded_choices_differ_and_are_reproducible(tiny_chat_llm, engine):
    llm = tiny_chat_llm
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, seed=11)
    first = complete(engine, llm.tokenizer, ids_of(llm), sampling, n=3)
    again = complete(engine, llm.tokenizer, ids_of(llm), sampling, n=3)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first}) == 3
    # choice i samples with seed + i: the same as a single choice seeded so
    for i, choice in enumerate(first):
        alone = complete(engine, llm.tokenizer, ids_of(llm),
                         SamplingConfig(max_new_tokens=16, temperature=1.0, seed=11 + i))
        assert alone[0].token_ids == choice.token_ids and alone[0].text == choice.text


def test_logprobs_are_the_log_softmax_of_the_raw_logits(tiny_chat_llm, engine):
    llm = tiny_chat_llm
    prompt = ids_of(llm)
    # settings that change the sampling distribution a lot: the log-probs must not see them
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.7, top_p=0.8, seed=3,
                              presence_penalty=1.5, frequency_penalty=1.0)
    (choice,) = complete(engine, llm.tokenizer, prompt, sampling, logprobs=4)
    entries = choice.logprobs
    assert len(entries) == len(choice.token_ids) == 8
    with torch.no_grad():
        logits = llm.model(torch.tensor([prompt + choice.token_ids]))[0]
    vocab = llm.tokenizer.vocab_size
    for k, (token, entry) in enumerate(zip(choice.token_ids, entries, strict=True)):
        logp = torch.log_softmax(logits[len(prompt) - 1 + k, :vocab].float(), dim=-1)
        assert entry.id == token and entry.raw == llm.tokenizer.token_bytes[token]
        assert entry.logprob == pytest.approx(float(logp[token]), abs=1e-4)
        best = torch.topk(logp, 4)
        assert [a.id for a in entry.top] == best.indices.tolist()
        assert [a.logprob for a in entry.top] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_a_stop_token_ends_the_choice_and_gets_no_entry(tiny_chat_llm, engine, monkeypatch):
    llm = tiny_chat_llm
    greedy = SamplingConfig(max_new_tokens=12, temperature=0)
    (free,) = complete(engine, llm.tokenizer, ids_of(llm), greedy)
    stop_token = free.token_ids[4]
    first_at = free.token_ids.index(stop_token)
    monkeypatch.setattr(llm.tokenizer, "stop_ids", {stop_token})
    (choice,) = complete(engine, llm.tokenizer, ids_of(llm), greedy, logprobs=0)
    assert choice.finish_reason == "stop"
    assert choice.token_ids == free.token_ids[:first_at + 1]  # the stop token is counted
    assert len(choice.logprobs) == first_at  # … but is not part of the text


def test_a_stop_string_cuts_the_text_and_frees_the_row(tiny_chat_llm):
    llm = tiny_chat_llm
    one_row = Engine(llm.model, max_batch=1, max_len=llm.max_context,
                     vocab_size=llm.tokenizer.vocab_size)
    free = complete(one_row, llm.tokenizer, ids_of(llm),
                    SamplingConfig(max_new_tokens=30, temperature=0))[0].text
    stop = free[len(free) // 2:len(free) // 2 + 3]
    cut = SamplingConfig(max_new_tokens=30, temperature=0, stop=[stop])
    steps = []
    step = one_row.step
    one_row.step = lambda: steps.append(1) or step()
    # the second choice can only start once the first one's row is freed by its stop string
    choices = complete(one_row, llm.tokenizer, ids_of(llm), cut, n=2)
    for choice in choices:
        assert choice.text == free[:free.index(stop)] and choice.finish_reason == "stop"
        assert len(choice.token_ids) < 30
    # no step was spent on a choice after its stop string (the first token is the prefill's)
    assert len(steps) == sum(len(c.token_ids) - 1 for c in choices)
    assert not one_row.active


def test_a_budget_of_zero_finishes_at_once(tiny_chat_llm, engine):
    (choice,) = complete(engine, tiny_chat_llm.tokenizer, ids_of(tiny_chat_llm),
                         SamplingConfig(max_new_tokens=0), logprobs=2)
    assert (choice.text, choice.token_ids, choice.finish_reason, choice.logprobs) == \
        ("", [], "length", [])


def test_a_busy_engine_or_a_bad_n_is_refused(tiny_chat_llm, engine):
    tokenizer, ids = tiny_chat_llm.tokenizer, ids_of(tiny_chat_llm)
    with pytest.raises(CentelhaError, match="n must be"):
        complete(engine, tokenizer, ids, n=0)
    engine.add(Request(ids, SamplingConfig(max_new_tokens=5)))
    with pytest.raises(CentelhaError, match="busy"):
        complete(engine, tokenizer, ids)
    with pytest.raises(CentelhaError, match="empty"):
        complete(Engine(tiny_chat_llm.model, max_batch=1), tokenizer, [])


def test_openai_parameters_become_sampling_configs():
    assert openai_sampling(room=50).max_new_tokens == 50
    assert openai_sampling(room=50, max_tokens=7).max_new_tokens == 7
    assert openai_sampling(room=50, max_tokens=10**9).max_new_tokens == 50  # clamped
    assert openai_sampling(room=9, top_p=1.0).top_p is None  # 1.0 filters nothing
    assert openai_sampling(room=9, top_p=0.5).top_p == 0.5
    cfg = openai_sampling(room=9, temperature=0.3, presence_penalty=0.5, frequency_penalty=-1,
                          seed=4, stop=("a", "b"))
    assert (cfg.temperature, cfg.presence_penalty, cfg.frequency_penalty, cfg.stop) == \
        (0.3, 0.5, -1, ["a", "b"])
    assert [c.seed for c in choice_samplings(cfg, 3)] == [4, 5, 6]
    assert [c.seed for c in choice_samplings(openai_sampling(room=9), 2)] == [None, None]
    with pytest.raises(CentelhaError, match="seed"):
        choice_samplings(SamplingConfig(seed=2**64 - 1), 2)  # seed + 1 is out of range


def test_llm_complete_is_the_librarys_n_choices(tiny_chat_llm):
    """`LLM.complete` reaches the same choices as the server's runner: seeded choice i is
    a lone generation with seed + i, and log-probs come with each token."""
    llm, messages = tiny_chat_llm, [{"role": "user", "content": "Quem era Capitu?"}]
    settings = dict(max_new_tokens=8, temperature=1.0, seed=7)
    first, second = llm.complete(messages, n=2, logprobs=2, **settings)
    assert first.text.strip() == llm.chat(messages, **settings)
    assert second.text.strip() == llm.chat(messages, **{**settings, "seed": 8})
    assert first.text != second.text
    stopped = first.token_ids[-1] in llm.tokenizer.stop_ids
    assert len(first.logprobs) == len(first.token_ids) - stopped > 0  # a stop token has none
    assert all(len(entry.top) == 2 for entry in first.logprobs)
