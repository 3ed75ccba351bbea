"""`centelha serve` through the official `openai` client, against a real server on a free
loopback port: chat and completions, streaming or not, n, stop, log-probs, usage,
continuous batching (same greedy text alone or in a crowd), disconnects, a full queue, the
API key, the context limit, and the `centelha serve` command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
from conftest import PYTHON, RunningServer
from openai import OpenAI

from centelha.api import LLM
from centelha.engine import Request
from centelha.generate import prompt_ids
from centelha.sampling import SamplingConfig
from centelha.serve.app import serve_model

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(smollm2_server):
    return OpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def small_server(smollm2_llm):
    """One row, one waiting place, a 256-position context and an API key."""
    llm = LLM(smollm2_llm.model, smollm2_llm.tokenizer, max_context=256)
    server = RunningServer([serve_model(llm, MODEL, max_batch=1, max_queue=1)],
                           api_key="SECRET")
    yield server
    server.close()


def test_models_and_health(client, smollm2_server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(smollm2_server.url + "/health").json()
    assert health["status"] == "ok" and health["models"][0]["id"] == MODEL


def test_chat_answers_and_counts_usage_with_our_tokenizer(client, smollm2_llm):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=40)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    # the same greedy reply as the library gives, and usage counted by our tokenizer
    assert choice.message.content == smollm2_llm.chat(FRANCE, temperature=0, max_new_tokens=40)
    ids = prompt_ids(smollm2_llm.tokenizer, smollm2_llm.chat_prompt(FRANCE), special=True)
    assert reply.usage.prompt_tokens == len(ids)
    # every token the model generated, the end-of-turn token included
    greedy = SamplingConfig(max_new_tokens=40, temperature=0)
    generated = list(smollm2_llm.engine.stream(
        Request(ids, greedy, frozenset(smollm2_llm.tokenizer.stop_ids))))
    assert generated[-1].token in smollm2_llm.tokenizer.stop_ids
    assert reply.usage.completion_tokens == len(generated)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_chat_equals_the_whole_reply(client, smollm2_server):
    whole = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=30)
    stream = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                            max_tokens=30, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # the raw event stream ends with OpenAI's sentinel
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 3, "stream": True}
    raw = httpx.post(smollm2_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_max_tokens_ends_with_length(client):
    for limit in ("max_tokens", "max_completion_tokens"):
        reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                               **{limit: 3})
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 3


def test_completions_n_stop_and_logprobs(client):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", n=2,
                                      max_tokens=12, temperature=0.9, seed=7, logprobs=3,
                                      stop=["\n"])
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert "\n" not in choice.text
        assert choice.finish_reason in ("stop", "length")
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
        assert all(len(top) <= 3 for top in lp.top_logprobs)
        assert lp.text_offset == sorted(lp.text_offset)
    # a seed makes sampling reproducible
    again = client.completions.create(model=MODEL, prompt="The capital of France is", n=2,
                                      max_tokens=12, temperature=0.9, seed=7, stop=["\n"])
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]


def test_a_stop_string_cuts_the_text_and_is_not_returned(client):
    free = client.completions.create(model=MODEL, prompt="One, two, three, four,",
                                     max_tokens=12, temperature=0).choices[0].text
    word = free.strip().split()[1]  # a word the greedy continuation writes
    cut = client.completions.create(model=MODEL, prompt="One, two, three, four,",
                                    max_tokens=12, temperature=0, stop=[word])
    assert cut.choices[0].text == free[:free.index(word)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_logprobs_are_the_model_s_and_add_up_to_the_text(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                           max_tokens=12, logprobs=True, top_logprobs=5)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy takes the most likely
        assert all(lp <= 0 for lp in tops)


def test_eight_parallel_greedy_streams_equal_their_sequential_results(client, smollm2_server):
    prompts = ["Name a color.", "Diga um número.", "What is 2 + 2?", "Escreva uma palavra.",
               "Say hello.", "Qual é a capital do Brasil?", "Name a fruit.", "Conte até três."]
    settings = dict(model=MODEL, temperature=0, max_tokens=24)
    alone = [client.chat.completions.create(messages=[{"role": "user", "content": p}],
                                            **settings).choices[0].message.content
             for p in prompts]
    scheduler = smollm2_server.served[0].scheduler
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
        thread.join(timeout=300)
    assert [results.get(i) for i in range(len(prompts))] == alone
    assert scheduler.peak >= 4  # they really were decoded together


def test_a_disconnect_frees_its_row_at_once(client, smollm2_server):
    scheduler = smollm2_server.served[0].scheduler
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 3000, "temperature": 1.0,
            "stream": True}
    with httpx.stream("POST", smollm2_server.url + "/v1/chat/completions", json=body,
                      timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert scheduler.active == 1
    deadline = time.monotonic() + 5  # 3000 tokens would take minutes: only a cancel ends it
    while scheduler.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scheduler.active == 0
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"


def test_a_full_queue_answers_503_and_the_server_recovers(small_server):
    url, key = small_server.url, {"Authorization": "Bearer SECRET"}
    scheduler = small_server.served[0].scheduler
    # greedy counting goes on until max_tokens: seconds of work for the only row
    long_body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 200, "temperature": 0,
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
        while scheduler.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.queued == 1 and scheduler.active == 1
        full = httpx.post(url + "/v1/completions", headers=key, timeout=60,
                          json={**long_body, "stream": True})
        assert full.status_code == 503
        assert full.json()["error"]["code"] == "server_busy"
    waiter.join(timeout=60)
    assert waiting[0].status_code == 200
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_the_api_key_guards_every_v1_route(small_server):
    url = small_server.url
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic SECRET"}):
        for method, path, json in (("GET", "/v1/models", None),
                                   ("POST", "/v1/completions", body),
                                   ("POST", "/v1/chat/completions", {"model": MODEL})):
            response = httpx.request(method, url + path, json=json, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"]["type"] == "authentication_error"
    ok = OpenAI(base_url=url + "/v1", api_key="SECRET", max_retries=0)
    assert ok.completions.create(model=MODEL, prompt="Hi", max_tokens=1).choices
    assert httpx.get(url + "/health").status_code == 200  # not an API route
    assert httpx.get(url + "/").status_code == 200       # the page asks for the key itself


def test_max_tokens_is_clamped_to_the_context(small_server, smollm2_llm, monkeypatch):
    # no stop token can end the reply early: only the context's end does
    monkeypatch.setattr(smollm2_llm.tokenizer, "stop_ids", set())
    client = OpenAI(base_url=small_server.url + "/v1", api_key="SECRET", max_retries=0)
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=100000,
                                      temperature=1.0, seed=1)
    prompt = len(prompt_ids(smollm2_llm.tokenizer, "Once upon a time"))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 256 - prompt
    assert reply.usage.total_tokens == 256


def test_a_prompt_over_the_context_is_refused_with_a_reason(small_server):
    client = OpenAI(base_url=small_server.url + "/v1", api_key="SECRET", max_retries=0)
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "palavra " * 300}])
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and "context" in error["message"]


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
        assert health.json()["models"][0]["id"] == MODEL
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0,
                                               max_tokens=12)
        assert "Paris" in reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_waiting_non_streaming_client_that_leaves_is_cancelled(small_server, monkeypatch):
    """A client of a non-streamed reply is polled while it waits: gone, its request ends."""
    scheduler = small_server.served[0].scheduler
    step = scheduler.engine.step

    def slow_step():  # 200 tokens take at least 10 s, whatever the machine: only a cancel
        time.sleep(0.05)  # ends the request sooner
        return step()

    monkeypatch.setattr(scheduler.engine, "step", slow_step)
    monkeypatch.setattr(small_server.served[0].llm.tokenizer, "stop_ids", set())
    body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 200, "temperature": 0}
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(small_server.url + "/v1/completions", json=body, timeout=1.0,
                   headers={"Authorization": "Bearer SECRET"})
    while scheduler.active and time.monotonic() < started + 5:
        time.sleep(0.02)
    assert scheduler.active == 0 and time.monotonic() - started < 5
