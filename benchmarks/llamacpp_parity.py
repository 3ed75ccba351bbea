"""Does llama.cpp run our exported GGUF files, and does it agree with us?

Exports the bundled SmolLM2-135M-Instruct (and a model trained by the quickstart, when
`runs/quickstart` exists) to GGUF with `centelha.formats.gguf.save_gguf`, then decodes
32 tokens greedily with llama.cpp (through `llama-cpp-python`, the `bench` extra) and
with centelha, from the same token ids, and prints whether the two agree token for token.

    python benchmarks/llamacpp_parity.py [--dtype f32|f16|q8_0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from centelha import load
from centelha.engine import generate_ids
from centelha.formats.gguf import save_gguf
from centelha.sampling import SamplingConfig

PROMPTS = ["The capital of France is", "Era uma vez um rei que", "def fibonacci(n):"]


def llama_cpp_greedy(path: Path, prompt_ids: list[int], steps: int, context: int) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=min(512, context), n_threads=torch.get_num_threads(),
                verbose=False, logits_all=False)
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(token)
        if len(out) == steps:
            break
    return out


def compare(name: str, llm, gguf: Path, steps: int) -> None:
    for prompt in PROMPTS:
        ids = llm.tokenizer.encode(prompt)
        ours = list(generate_ids(llm.model, ids, SamplingConfig(max_new_tokens=steps,
                                                                temperature=0)))
        theirs = llama_cpp_greedy(gguf, ids, steps, llm.model.cfg.block_size)
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    None)
        verdict = "identical" if ours == theirs else f"first difference at token {same}"
        print(f"{name:28s} {prompt!r:28s} {len(ours)} vs {len(theirs)} tokens: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="f32", choices=["f32", "f16", "q8_0"])
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}; "
          f"{llama_cpp.llama_print_system_info().decode().strip()}")
    sources = {"smollm2 (exported)": "smollm2-135m-instruct"}
    if Path("runs/quickstart/model.safetensors").is_file():
        sources["quickstart model"] = "runs/quickstart"
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in sources.items():
            llm = load(source)
            path = Path(tmp) / f"{name.split()[0]}.gguf"
            save_gguf(llm.model, llm.tokenizer, path, dtype=args.dtype)
            compare(f"{name}, {args.dtype}", llm, path, args.steps)


if __name__ == "__main__":
    main()
