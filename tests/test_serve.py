"""`centelha serve` through the official `openai` client, against a real server on a free
loopback port: chat and completions, streaming or not, n, stop, seed, log-probs, usage,
continuous batching (same greedy text alone or in a crowd), disconnects, a full queue, the
API key, the context limit, roles, and the `centelha serve` command itself.

The protocol runs against the tiny random chat model (milliseconds a request); exact
outputs are compared with the library's own on that model (`LLM`, `choices.complete`).
Where a test needs a reply that lasts, the engine's steps are slowed down rather than the
reply made long, so that only a cancel can end it in time. A few end-to-end checks run
the bundled SmolLM2 (real text, a real chat template) and are marked slow."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
from conftest import PYTHON, RunningServer
from fastapi.testclient import TestClient
from openai import OpenAI

from centelha.api import LLM
from centelha.choices import complete, openai_sampling
from centelha.engine import Request
from centelha.generate import prompt_ids
from centelha.sampling import SamplingConfig
from centelha.serve.app import create_app
from centelha.serve.served import serve_model
from centelha.tokenizer import Tokenizer

MODEL = "tiny"
SMOLLM2 = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def small_server(tiny_chat_llm):
    """One row, one waiting place, a 128-position context and an API key."""
    llm = LLM(tiny_chat_llm.model, tiny_chat_llm.tokenizer, max_context=128)
    server = RunningServer([serve_model(llm, MODEL, max_batch=1, max_queue=1)],
                           api_key="SECRET")
    yield server
    server.close()


def greedy_tokens(llm: LLM, ids: list[int], max_new_tokens: int) -> list[int]:
    """The library's greedy tokens for `ids`, as the engine makes them."""
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    request = Request(ids, greedy, frozenset(llm.tokenizer.stop_ids))
    return [t.token for t in llm.engine.stream(request)]


def stop_at_greedy_token(llm: LLM, ids: list[int], k: int, monkeypatch) -> int:
    """Make the k-th greedy token of `ids` a stop token (random weights rarely write one);
    returns how many tokens the greedy reply then has, the stop token included."""
    tokens = greedy_tokens(llm, ids, k + 1)
    monkeypatch.setattr(llm.tokenizer, "stop_ids", llm.tokenizer.stop_ids | {tokens[k]})
    return tokens.index(tokens[k]) + 1


def slowed(monkeypatch, served, seconds: float = 0.05, stop_tokens: bool = False) -> None:
    """Each decode step of `served` takes at least `seconds`, and (unless `stop_tokens`) no
    stop token ends a reply early: a reply of many tokens then outlasts the test's deadlines."""
    engine = served.scheduler.engine
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    if not stop_tokens:
        monkeypatch.setattr(served.llm.tokenizer, "stop_ids", set())


def test_models_and_health(client, tiny_server):
    assert [m.id for m in client.models.list()] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.context_length == 256
    health = httpx.get(tiny_server.url + "/health").json()
    assert health == {"status": "ok", "models": [{"id": MODEL, "active": 0, "queued": 0}]}


def test_chat_equals_the_library_and_counts_usage_with_our_tokenizer(client, tiny_chat_llm,
                                                                     monkeypatch):
    llm = tiny_chat_llm
    ids = llm.chat_ids(FRANCE)
    generated = stop_at_greedy_token(llm, ids, 6, monkeypatch)
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=40)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    library = "".join(llm.stream(FRANCE, temperature=0, max_new_tokens=40))
    assert choice.message.content == library and library
    assert reply.usage.prompt_tokens == len(ids)
    # every token the model generated, the stop token included
    assert reply.usage.completion_tokens == generated
    assert reply.usage.total_tokens == len(ids) + generated
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"


def test_streaming_chat_equals_the_whole_reply(client, tiny_server, tiny_chat_llm,
                                               monkeypatch):
    stop_at_greedy_token(tiny_chat_llm, tiny_chat_llm.chat_ids(FRANCE), 9, monkeypatch)
    whole = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=30)
    stream = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                            max_tokens=30, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # the raw event stream: `data:` events, one JSON object each, then OpenAI's sentinel
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 3, "stream": True}
    raw = httpx.post(tiny_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = raw.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_max_tokens_ends_with_length(client, tiny_server, monkeypatch):
    monkeypatch.setattr(tiny_server.served[0].llm.tokenizer, "stop_ids", set())
    for limit in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                               **{limit: 3})
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3
    both = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                          max_tokens=9, max_completion_tokens=2)
    assert both.usage.completion_tokens == 2  # the newer name wins


def test_completions_n_seed_and_logprobs_are_the_library_s(client, tiny_server, tiny_chat_llm):
    settings = dict(max_tokens=12, temperature=0.9, seed=7, presence_penalty=0.5)
    reply = client.completions.create(model=MODEL, prompt="Era uma vez", n=2, logprobs=3,
                                      **settings)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text != reply.choices[1].text  # seed + i: the choices differ
    # the same choices, log-probs included, as the library's runner makes them
    llm, ids = tiny_chat_llm, prompt_ids(tiny_chat_llm.tokenizer, "Era uma vez")
    sampling = openai_sampling(tiny_server.served[0].context - len(ids), **settings)
    library = complete(llm.engine, llm.tokenizer, ids, sampling, n=2, logprobs=3)
    for choice, expected in zip(reply.choices, library, strict=True):
        assert choice.text == expected.text and choice.finish_reason == expected.finish_reason
        lp = choice.logprobs
        assert lp.tokens == [e.text for e in expected.logprobs]
        assert lp.token_logprobs == pytest.approx([e.logprob for e in expected.logprobs])
        assert [set(top) for top in lp.top_logprobs] == \
            [{a.text for a in e.top} for e in expected.logprobs]
        assert all(len(top) <= 3 for top in lp.top_logprobs)
        assert lp.text_offset == [sum(map(len, lp.tokens[:k])) for k in range(len(lp.tokens))]
    assert reply.usage.completion_tokens == sum(len(c.token_ids) for c in library)
    # a seed makes sampling reproducible; without logprobs there are none
    again = client.completions.create(model=MODEL, prompt="Era uma vez", n=2, **settings)
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]
    assert all(c.logprobs is None for c in again.choices)


def test_a_stop_string_cuts_the_text_and_is_not_returned(client):
    free = client.completions.create(model=MODEL, prompt="Era uma vez", max_tokens=24,
                                     temperature=0).choices[0].text
    stop = free[len(free) // 2:len(free) // 2 + 3]  # text the greedy continuation writes
    for stops in ([stop], ["never written", stop]):
        cut = client.completions.create(model=MODEL, prompt="Era uma vez", max_tokens=24,
                                        temperature=0, stop=stops, n=2)
        for choice in cut.choices:
            assert choice.text == free[:free.index(stop)]
            assert choice.finish_reason == "stop"
        assert cut.usage.completion_tokens < 2 * 24


def test_a_stop_string_ends_a_stream_too(client):
    free = client.completions.create(model=MODEL, prompt="Era uma vez", max_tokens=24,
                                     temperature=0).choices[0].text
    stop = free[len(free) // 2:len(free) // 2 + 3]
    chunks = list(client.completions.create(model=MODEL, prompt="Era uma vez", max_tokens=24,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == free[:free.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].object == "text_completion" and chunks[0].id.startswith("cmpl-")


def test_a_stop_string_frees_its_row_at_once(client, tiny_server, monkeypatch):
    served = tiny_server.served[0]
    slowed(monkeypatch, served, 0.02)  # 200 tokens take at least 4 s: only a cancel is sooner
    free = client.completions.create(model=MODEL, prompt="Era uma vez", max_tokens=16,
                                     temperature=0).choices[0].text
    stop = free[len(free) // 2:len(free) // 2 + 3]
    cut = client.completions.create(model=MODEL, prompt="Era uma vez", max_tokens=200,
                                    temperature=0, stop=stop)
    assert cut.choices[0].text == free[:free.index(stop)]
    deadline = time.monotonic() + 1
    while served.scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.scheduler.active == 0


def test_chat_logprobs_are_the_model_s_and_add_up_to_the_text(client, tiny_chat_llm):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=12, logprobs=True, top_logprobs=5)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == 12
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy takes the most likely
        assert all(lp <= 0 for lp in tops) and entry.bytes
    no_top = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                            max_tokens=3, logprobs=True)
    assert [e.top_logprobs for e in no_top.choices[0].logprobs.content] == [[], [], []]
    assert client.chat.completions.create(model=MODEL, messages=FRANCE,
                                          max_tokens=3).choices[0].logprobs is None


DEVELOPER_AWARE = ("{% for m in messages %}{% if m['role'] == 'developer' %}[{{ m['content'] }}]"
                   "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                   "{% endif %}{% endfor %}<|im_start|>assistant\n")


def test_a_developer_message_reaches_the_template_as_it_is(tiny_chat_llm):
    # a template that knows the developer role writes it its own way: nothing may rename it
    tokenizer = Tokenizer(tiny_chat_llm.tokenizer.hf, {"chat_template": DEVELOPER_AWARE,
                                                       "eos_token": "<|im_end|>"})
    llm = LLM(tiny_chat_llm.model, tokenizer, max_context=128)
    served = serve_model(llm, MODEL, max_batch=1)
    as_sent = [{"role": "developer", "content": "Seja breve e clara."}, *FRANCE]
    as_system = [{"role": "system", "content": "Seja breve e clara."}, *FRANCE]
    assert len(llm.chat_ids(as_sent)) != len(llm.chat_ids(as_system))
    with TestClient(create_app([served]), base_url="http://localhost") as http:
        reply = http.post("/v1/chat/completions", json={"model": MODEL, "messages": as_sent,
                                                        "max_tokens": 1})
    served.scheduler.close()
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == len(llm.chat_ids(as_sent))


def test_eight_parallel_greedy_streams_equal_their_sequential_results(client, tiny_server,
                                                                      monkeypatch):
    prompts = ["Name a color.", "Diga um número.", "What is 2 + 2?", "Escreva uma palavra.",
               "Say hello.", "Qual é a capital do Brasil?", "Name a fruit.", "Conte até três."]
    settings = dict(model=MODEL, temperature=0, max_tokens=16)
    alone = [client.chat.completions.create(messages=[{"role": "user", "content": p}],
                                            **settings).choices[0].message.content
             for p in prompts]
    slowed(monkeypatch, tiny_server.served[0], 0.02, stop_tokens=True)  # to overlap
    scheduler = tiny_server.served[0].scheduler
    scheduler.peak = 0
    results: dict[int, str] = {}
    start = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        start.wait()
        stream = client.chat.completions.create(
            messages=[{"role": "user", "content": prompts[i]}], stream=True, **settings)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results.get(i) for i in range(len(prompts))] == alone
    assert scheduler.peak >= 4  # they really were decoded together


def test_a_disconnect_frees_its_row_at_once(client, tiny_server, monkeypatch):
    served = tiny_server.served[0]
    slowed(monkeypatch, served)  # 200 tokens take at least 10 s: only a cancel ends it sooner
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 200, "temperature": 1.0,
            "stream": True}
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", json=body,
                      timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert served.scheduler.active == 1
    deadline = time.monotonic() + 5
    while served.scheduler.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.scheduler.active == 0
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"


def test_a_full_queue_answers_503_and_the_server_recovers(small_server, monkeypatch):
    url, key = small_server.url, {"Authorization": "Bearer SECRET"}
    served = small_server.served[0]
    slowed(monkeypatch, served)  # seconds of work for the only row
    long_body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 100, "temperature": 0,
                 "stream": True}
    waiting: list[httpx.Response] = []
    with httpx.stream("POST", url + "/v1/completions", json=long_body, headers=key,
                      timeout=60) as first:
        lines = first.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)  # it holds the only row
        waiter = threading.Thread(target=lambda: waiting.append(httpx.post(
            url + "/v1/completions", headers=key, timeout=60,
            json={**long_body, "stream": False, "max_tokens": 2})))
        waiter.start()
        deadline = time.monotonic() + 10
        while served.scheduler.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.scheduler.queued == 1 and served.scheduler.active == 1
        full = httpx.post(url + "/v1/completions", headers=key, timeout=60,
                          json={**long_body, "stream": True})
        assert full.status_code == 503
        assert full.json()["error"]["code"] == "server_busy"
    waiter.join(timeout=60)
    assert waiting[0].status_code == 200
    assert waiting[0].json()["usage"]["completion_tokens"] == 2
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_the_api_key_guards_every_v1_route(small_server):
    url = small_server.url
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    http = httpx.Client(base_url=url, timeout=60)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic SECRET"}):
        for method, path, json in (("GET", "/v1/models", None),
                                   ("POST", "/v1/completions", body),
                                   ("POST", "/v1/chat/completions", {"model": MODEL})):
            response = http.request(method, path, json=json, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
    ok = OpenAI(base_url=url + "/v1", api_key="SECRET", max_retries=0)
    assert ok.completions.create(model=MODEL, prompt="Hi", max_tokens=1).choices
    assert http.get("/health").status_code == 200  # not an API route
    assert http.get("/").status_code == 200       # the page asks for the key itself
    http.close()


def test_max_tokens_is_clamped_to_the_context(small_server, tiny_chat_llm, monkeypatch):
    # no stop token can end the reply early: only the context's end does
    monkeypatch.setattr(tiny_chat_llm.tokenizer, "stop_ids", set())
    client = OpenAI(base_url=small_server.url + "/v1", api_key="SECRET", max_retries=0)
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=100000,
                                      temperature=1.0, seed=1)
    prompt = len(prompt_ids(tiny_chat_llm.tokenizer, "Once upon a time"))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 128 - prompt
    assert reply.usage.total_tokens == 128


def test_a_prompt_over_the_context_is_refused_with_a_reason(small_server):
    client = OpenAI(base_url=small_server.url + "/v1", api_key="SECRET", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "palavra " * 300}])
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and "context" in error["message"]


def test_a_waiting_non_streaming_client_that_leaves_is_cancelled(small_server, monkeypatch):
    """A client of a non-streamed reply is polled while it waits: gone, its request ends."""
    scheduler = small_server.served[0].scheduler
    slowed(monkeypatch, small_server.served[0])  # 100 tokens take at least 5 s
    body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 100, "temperature": 0}
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(small_server.url + "/v1/completions", json=body, timeout=1.0,
                   headers={"Authorization": "Bearer SECRET"})
    while scheduler.active and time.monotonic() < started + 4:
        time.sleep(0.02)
    assert scheduler.active == 0 and time.monotonic() - started < 4


# -- end to end on the bundled SmolLM2: real text, a real chat template -------------------------
@pytest.mark.slow
def test_smollm2_answers_like_the_library(smollm2_server, smollm2_llm):
    client = OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=SMOLLM2, messages=FRANCE, temperature=0,
                                           max_tokens=40, logprobs=True, top_logprobs=2)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content and choice.finish_reason == "stop"
    assert choice.message.content == smollm2_llm.chat(FRANCE, temperature=0, max_new_tokens=40)
    assert "".join(e.token for e in choice.logprobs.content) == choice.message.content
    ids = prompt_ids(smollm2_llm.tokenizer, smollm2_llm.chat_prompt(FRANCE), special=True)
    assert reply.usage.prompt_tokens == len(ids)
    generated = greedy_tokens(smollm2_llm, ids, 40)
    assert generated[-1] in smollm2_llm.tokenizer.stop_ids  # the end-of-turn token, counted
    assert reply.usage.completion_tokens == len(generated)


@pytest.mark.slow
def test_the_serve_command_starts_the_bundled_model(tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CENTELHA_HOME": str(tmp_path)}
    process = subprocess.Popen([PYTHON, "-m", "centelha", "serve", "--port", str(port),
                                "--max-batch", "2"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"centelha serve did not start: {process.stdout.read()}")
                time.sleep(0.25)
        assert health.json()["models"][0]["id"] == SMOLLM2
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model=SMOLLM2, messages=FRANCE, temperature=0,
                                               max_tokens=12)
        assert "Paris" in reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
