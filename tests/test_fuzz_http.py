"""A property battery against the server: generated request bodies, headers and paths.

Hypothesis writes bodies for both POST routes — known fields with right or wrong values
(wrong types, huge numbers, unicode, nesting), fields missing and extra, bytes that are
not JSON or not UTF-8 — and every answer must be a 200 whose body is well formed, or a
4xx with OpenAI's error object: never a 500, never a dropped connection. The server then
still answers /health and a plain request. A tiny random model keeps each request at a
few milliseconds; `derandomize=True` makes the examples the same on every run (CI)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from centelha.api import LLM
from centelha.serve.app import create_app
from centelha.serve.served import serve_model

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

EXAMPLES = 500
BATTERY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])
KEY = "chave"


@pytest.fixture(scope="module")
def client(tiny_chat_llm):
    llm = LLM(tiny_chat_llm.model, tiny_chat_llm.tokenizer, max_context=64)
    served = serve_model(llm, "tiny", max_batch=4, max_queue=64)
    app = create_app([served], api_key=KEY)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        yield c
    served.scheduler.close()


# -- what a body is made of -------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                        max_leaves=6)


def right_or_wrong(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Usually a value the field accepts, sometimes any JSON value at all."""
    return st.one_of(valid, valid, anything)


roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"])
content = st.text(max_size=40) | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                           "text": st.text(max_size=20)}), max_size=2)
message = (st.fixed_dictionaries({"role": roles, "content": content})
           | st.fixed_dictionaries({}, optional={"role": right_or_wrong(roles),
                                                 "content": right_or_wrong(content),
                                                 "name": right_or_wrong(st.text(max_size=8))}))
stop = st.text(max_size=8) | st.lists(st.text(max_size=8), max_size=5)
COMMON = {
    "model": st.sampled_from(["tiny", "tiny", "tiny", "tiny ", "", "gpt-4"]),
    "max_tokens": st.integers(min_value=-2, max_value=6),
    "temperature": st.floats(min_value=-1, max_value=3),
    "top_p": st.floats(min_value=-0.5, max_value=1.5),
    "n": st.integers(min_value=0, max_value=3),
    "stop": stop,
    "seed": st.integers(min_value=-(2**70), max_value=2**70),
    "presence_penalty": st.floats(min_value=-3, max_value=3),
    "frequency_penalty": st.floats(min_value=-3, max_value=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": st.text(max_size=8),
}
CHAT_FIELDS = {**COMMON, "messages": st.lists(message, max_size=3),
               "max_completion_tokens": st.integers(min_value=-1, max_value=6),
               "logprobs": st.booleans(), "top_logprobs": st.integers(min_value=-1, max_value=25),
               "tools": st.lists(anything, max_size=1)}
COMPLETION_FIELDS = {**COMMON, "logprobs": st.integers(min_value=-1, max_value=7),
                     "prompt": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=2)
                     | st.lists(st.integers(min_value=-5, max_value=400), max_size=6),
                     "echo": st.booleans(), "suffix": st.text(max_size=4)}


# bodies a client would send: every value in range (what varies is which fields, and text)
IN_RANGE = {
    "model": st.just("tiny"), "max_tokens": st.integers(min_value=1, max_value=6),
    "temperature": st.floats(min_value=0, max_value=2), "top_p": st.floats(0.01, 1),
    "n": st.integers(1, 3), "stop": stop, "seed": st.integers(-(2**63), 2**63 - 1),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "stream": st.booleans(), "user": st.text(max_size=8),
}
CHAT_IN_RANGE = {**IN_RANGE, "messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]),
     "content": st.text(max_size=40)}), min_size=1, max_size=3), "logprobs": st.just(True),
    "top_logprobs": st.integers(0, 20)}
COMPLETION_IN_RANGE = {**IN_RANGE, "prompt": st.text(min_size=1, max_size=40)
                       | st.lists(st.integers(0, 250), min_size=1, max_size=6),
                       "logprobs": st.integers(0, 5)}


def bodies(fields: dict, required: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """JSON bodies built from `fields` (the `required` ones mostly present), with extra
    keys now and then, and sometimes bytes that are not JSON at all."""
    valid = CHAT_IN_RANGE if "messages" in fields else COMPLETION_IN_RANGE
    plausible = st.fixed_dictionaries({k: valid[k] for k in required},
                                      optional={k: v for k, v in valid.items()
                                                if k not in required})
    known = st.fixed_dictionaries(
        {k: right_or_wrong(fields[k]) for k in required},
        optional={k: right_or_wrong(v) for k, v in fields.items() if k not in required})
    missing = st.fixed_dictionaries({}, optional={k: right_or_wrong(v)
                                                  for k, v in fields.items()})
    extra = st.dictionaries(st.text(max_size=8), anything, max_size=2)
    as_json = st.builds(lambda a, b: json.dumps({**b, **a}).encode(),
                        st.sampled_from([plausible, plausible, known, missing]).flatmap(
                            lambda kind: kind), extra)
    other = (st.binary(max_size=40) | anything.map(lambda v: json.dumps(v).encode())
             | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
    return st.one_of(as_json, as_json, as_json, other)


def assert_well_answered(response) -> None:
    event(f"status {response.status_code}")  # pytest --hypothesis-show-statistics
    assert response.status_code != 500, response.text
    assert response.status_code in (200, 400, 401, 403, 404, 413, 415, 503), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        for data in events[:-1]:
            assert "error" not in json.loads(data), data
    else:
        assert response.json()["choices"]


def post(client, path: str, body: bytes):
    return client.post(path, content=body, headers={"Authorization": f"Bearer {KEY}",
                                                    "Content-Type": "application/json"})


@BATTERY
@given(body=bodies(CHAT_FIELDS, ("model", "messages")))
def test_generated_chat_bodies_get_a_clear_answer(client, body):
    assert_well_answered(post(client, "/v1/chat/completions", body))


@BATTERY
@given(body=bodies(COMPLETION_FIELDS, ("model", "prompt")))
def test_generated_completion_bodies_get_a_clear_answer(client, body):
    assert_well_answered(post(client, "/v1/completions", body))


header_text = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
       path=st.sampled_from(["/", "/health", "/v1/models", "/v1/models/tiny", "/v1/models/x/y",
                             "/v1/chat/completions", "/v1/completions", "/v1", "/static/app.js",
                             "/static/../pyproject.toml", "/v1/models/%00"]),
       authorization=header_text, content_type=header_text, host=header_text)
def test_generated_headers_and_paths_get_a_clear_answer(client, method, path, authorization,
                                                        content_type, host):
    headers = {"Authorization": authorization, "Content-Type": content_type, "Host": host}
    body = json.dumps({"model": "tiny", "prompt": "Era", "max_tokens": 2}).encode()
    response = client.request(method, path, content=body if method != "GET" else None,
                              headers=headers)
    assert response.status_code != 500, response.text
    if response.status_code >= 400 and response.headers["content-type"] == "application/json":
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_the_server_is_fine_after_the_battery(client):
    assert client.get("/health").json()["status"] == "ok"
    response = post(client, "/v1/chat/completions", json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "Olá"}],
         "max_tokens": 3, "temperature": 0}).encode())
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3
