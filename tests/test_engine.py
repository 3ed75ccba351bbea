"""The engine: batched greedy decode equals the plain model, requests join and leave."""

import pytest
import torch

from centelha.engine import Engine, Request, generate_ids
from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.sampling import SamplingConfig
from tests.conftest import tiny_config

GREEDY = SamplingConfig(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    torch.manual_seed(0)
    return Transformer(tiny_config(request.param, block_size=64)).eval()


def prompts(lengths, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=gen).tolist() for n in lengths]


def test_engine_greedy_equals_model_greedy_for_a_ragged_batch(model):
    batch = prompts((3, 17, 8, 1, 30, 12))
    expected = [list(generate_ids(model, p, GREEDY)) for p in batch]
    engine = Engine(model, max_batch=4, prefill_chunk=5)  # 6 requests through 4 rows
    assert engine.generate_batch([Request(p, GREEDY) for p in batch]) == expected
    assert engine.active == [] and engine.cache.lengths == [0] * 4


def test_alone_or_in_a_crowd_the_same_tokens(model):
    p = prompts((9,), seed=5)[0]
    sampled = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, seed=7)
    alone = [t.token for t in Engine(model, max_batch=1).stream(Request(p, sampled))]
    engine = Engine(model, max_batch=4)
    others = [Request(q, SamplingConfig(max_new_tokens=30, temperature=1.0, seed=i))
              for i, q in enumerate(prompts((4, 20, 6), seed=2))]
    crowd = run_together(engine, [*others, Request(p, sampled)])
    assert crowd[-1] == alone
    # and each of the others got its own tokens, as many as its budget
    assert [len(tokens) for tokens in crowd[:-1]] == [30, 30, 30]


def run_together(engine: Engine, requests: list[Request]) -> list[list[int]]:
    """Every request's tokens, decoded together through add and step."""
    tokens: dict[int, list[int]] = {r.id: [] for r in requests}
    for request in requests:
        first = engine.add(request)
        tokens[request.id].append(first.token)
    while engine.active:
        for token in engine.step():
            tokens[token.request_id].append(token.token)
    return [tokens[r.id] for r in requests]


def test_stop_ids_and_budget_set_the_finish_reason(model):
    p = prompts((6,))[0]
    tokens = list(Engine(model).stream(Request(p, GREEDY)))
    assert [t.finish_reason for t in tokens] == [None] * 11 + ["length"]
    stop = tokens[3].token
    stopped = list(Engine(model).stream(Request(p, GREEDY, stop_ids=frozenset({stop}))))
    assert stopped[-1].finish_reason == "stop"
    assert [t.token for t in stopped] == [t.token for t in tokens][:len(stopped)]


def test_a_request_that_leaves_frees_its_row(model):
    engine = Engine(model, max_batch=2)
    a, b = (Request(p, SamplingConfig(max_new_tokens=50, temperature=0)) for p in prompts((5, 7)))
    engine.add(a)
    engine.add(b)
    assert engine.free_rows == 0
    with pytest.raises(CentelhaError, match="batch is full"):
        engine.add(Request(prompts((3,))[0], GREEDY))
    engine.remove(a.id)  # a client disconnected
    assert engine.free_rows == 1 and engine.active[0].request is b
    expected = list(generate_ids(model, b.prompt_ids, b.sampling))
    rest = []
    while engine.active:
        rest += [t.token for t in engine.step()]
    assert rest == expected[1:]


def test_prompt_over_the_context_is_a_clear_error(model):
    engine = Engine(model, max_len=16)
    with pytest.raises(CentelhaError, match="context holds 16"):
        engine.add(Request(list(range(16)), GREEDY))
    with pytest.raises(CentelhaError, match="empty"):
        engine.add(Request([], GREEDY))
