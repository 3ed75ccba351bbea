"""Bad input against a running `centelha serve` (the tiny random chat model): every case gets
its 4xx status and OpenAI's error object, and the server stays healthy and keeps answering
afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

MODEL = "tiny"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "Olá!"}]


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": USER, "max_tokens": 2, **fields}


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "Era uma vez", "max_tokens": 2, **fields}


def without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


# (name, method, path, body: dict | bytes | None, status)
CASES = [
    ("invalid JSON", "POST", CHAT, b'{"model": "x", "messages": [', 400),
    ("not JSON at all", "POST", CHAT, b"hello", 400),
    ("a JSON array", "POST", CHAT, b"[1, 2]", 400),
    ("a JSON string", "POST", CHAT, b'"hi"', 400),
    ("empty body", "POST", CHAT, b"", 400),
    ("no model", "POST", CHAT, without(chat(), "model"), 400),
    ("model is a number", "POST", CHAT, chat(model=7), 400),
    ("no messages", "POST", CHAT, without(chat(), "messages"), 400),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400),
    ("messages not a list", "POST", CHAT, chat(messages="hi"), 400),
    ("message without role", "POST", CHAT, chat(messages=[{"content": "hi"}]), 400),
    ("unknown role", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400),
    ("tool role", "POST", CHAT, chat(messages=[{"role": "tool", "content": "hi"}]), 400),
    ("content is a number", "POST", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400),
    ("content missing", "POST", CHAT, chat(messages=[{"role": "user"}]), 400),
    ("image content", "POST", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]), 400),
    ("negative max_tokens", "POST", CHAT, chat(max_tokens=-5), 400),
    ("zero max_tokens", "POST", CHAT, chat(max_tokens=0), 400),
    ("huge max_tokens", "POST", CHAT, chat(max_tokens=10**20), 400),
    ("max_tokens as text", "POST", CHAT, chat(max_tokens="5"), 400),
    ("max_tokens fractional", "POST", CHAT, chat(max_tokens=2.5), 400),
    ("negative max_completion_tokens", "POST", CHAT, chat(max_completion_tokens=-1), 400),
    ("negative temperature", "POST", CHAT, chat(temperature=-1), 400),
    ("temperature too high", "POST", CHAT, chat(temperature=5), 400),
    ("temperature as text", "POST", CHAT, chat(temperature="hot"), 400),
    ("top_p zero", "POST", CHAT, chat(top_p=0), 400),
    ("top_p above one", "POST", CHAT, chat(top_p=1.5), 400),
    ("n zero", "POST", CHAT, chat(n=0), 400),
    ("n too large", "POST", CHAT, chat(n=100), 400),
    ("five stop strings", "POST", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400),
    ("stop is a number", "POST", CHAT, chat(stop=3), 400),
    ("stream as text", "POST", CHAT, chat(stream="yes"), 400),
    ("stream_options without stream", "POST", CHAT,
     chat(stream_options={"include_usage": True}), 400),
    ("presence_penalty too high", "POST", CHAT, chat(presence_penalty=3), 400),
    ("frequency_penalty too low", "POST", CHAT, chat(frequency_penalty=-3), 400),
    ("top_logprobs too many", "POST", CHAT, chat(logprobs=True, top_logprobs=50), 400),
    ("top_logprobs without logprobs", "POST", CHAT, chat(top_logprobs=3), 400),
    ("logprobs as text", "POST", CHAT, chat(logprobs="true"), 400),
    ("seed fractional", "POST", CHAT, chat(seed=1.5), 400),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function"}]), 400),
    ("unknown model", "POST", CHAT, chat(model="gpt-17"), 404),
    ("unknown model, completions", "POST", COMPLETIONS, completion(model="nope"), 404),
    ("prompt over the context", "POST", CHAT,
     chat(messages=[{"role": "user", "content": "palavra " * 5000}]), 400),
    ("oversize body", "POST", CHAT,
     chat(messages=[{"role": "user", "content": "x" * (2 << 20)}]), 413),
    ("no prompt", "POST", COMPLETIONS, without(completion(), "prompt"), 400),
    ("empty prompt", "POST", COMPLETIONS, completion(prompt=""), 400),
    ("prompt is an object", "POST", COMPLETIONS, completion(prompt={"a": 1}), 400),
    ("two prompts", "POST", COMPLETIONS, completion(prompt=["a", "b"]), 400),
    ("token id out of range", "POST", COMPLETIONS, completion(prompt=[1, 10**9]), 400),
    ("negative token id", "POST", COMPLETIONS, completion(prompt=[-1]), 400),
    ("echo", "POST", COMPLETIONS, completion(echo=True), 400),
    ("completion logprobs too many", "POST", COMPLETIONS, completion(logprobs=10), 400),
    ("GET on a POST route", "GET", CHAT, None, 405),
    ("unknown route", "GET", "/v1/nothing", None, 404),
    ("unknown model card", "GET", "/v1/models/nope", None, 404),
]


@pytest.fixture(scope="module")
def http(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("name,method,path,body,status", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_status_and_an_openai_error(http, name, method, path, body, status):
    if isinstance(body, dict):
        content = json.dumps(body).encode()
    else:
        content = body
    headers = {"Content-Type": "application/json"} if content is not None else {}
    response = http.request(method, path, content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_body_that_lies_about_its_length_is_refused(tiny_server):
    # Content-Length says small, chunks keep coming: counted as they arrive
    def chunks():
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    response = httpx.post(tiny_server.url + CHAT, content=chunks(), timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_the_server_is_fine_after_the_battery(http):
    assert http.get("/health").json()["status"] == "ok"
    response = http.post(CHAT, json=chat(temperature=0))
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
