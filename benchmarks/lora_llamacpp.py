"""Does llama.cpp apply our GGUF LoRA export as we do? A peer check, not a test.

Builds a small random llama-shaped model (grouped-query attention, so q and k permute
with different head counts), puts rank-8 adapters with a random B on every linear layer,
exports the base (`save_gguf`, f32) and the adapter (`export_gguf_lora`), and decodes 16
tokens greedily with llama.cpp (llama-cpp-python, `lora_path=`) and with centelha's merged
model, from the same prompt ids. Prints whether the two agree, once for plain LoRA and
once for rsLoRA (whose alpha the export rewrites), and, as a control, whether the adapter
changes centelha's tokens at all (a check that passes with the adapter ignored is no check).

    python benchmarks/lora_llamacpp.py [--smollm2]   # --smollm2: the bundled model too
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from centelha.config import ModelConfig
from centelha.engine import generate_ids
from centelha.formats.gguf import save_gguf
from centelha.lora import apply_lora, lora_layers, merged_model
from centelha.lora.gguf_export import export_gguf_lora
from centelha.model import Transformer
from centelha.sampling import SamplingConfig
from centelha.tokenizer import Tokenizer, train_bpe

STEPS = 16
PROMPT = [5, 17, 42, 99, 7, 64, 128, 3]


def tiny_llama(vocab_size: int) -> Transformer:
    """Head size 64 and d_model 128 or more: shapes llama.cpp's kernels accept."""
    cfg = ModelConfig.from_dict(dict(family="llama", vocab_size=vocab_size, block_size=256,
                                     n_layer=2, n_head=4, n_kv_head=2, d_model=256,
                                     d_ff=512))
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def with_random_adapter(base: Transformer, rslora: bool) -> Transformer:
    model = copy.deepcopy(base)
    apply_lora(model, r=8, alpha=16, rslora=rslora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # big enough to change the greedy tokens
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=generator))
    return model


def ours(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    config = SamplingConfig(max_new_tokens=STEPS, temperature=0)
    return list(generate_ids(model, prompt, config))


def our_logits(model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt]))[0].float()


def llama_cpp(base: Path, adapter: Path | None,
              prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    """llama.cpp's greedy tokens, and its logits at every prompt position."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(base), lora_path=str(adapter) if adapter else None,
                n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    llm.eval(prompt)
    logits = torch.from_numpy(llm.scores[:len(prompt)].copy())
    llm.reset()
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(token)
        if len(out) == STEPS:
            break
    return out, logits


def verdict(a: list[int], b: list[int]) -> str:
    if a == b:
        return "equal"
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return f"NOT equal (first difference at token {first})"


def check(name: str, base: Transformer, tokenizer: Tokenizer, prompt: list[int],
          folder: Path, rslora: bool) -> bool:
    model = with_random_adapter(base, rslora)
    base_path, lora_path = folder / f"{name}-base.gguf", folder / f"{name}-lora.gguf"
    save_gguf(base, tokenizer, base_path, dtype="f32")
    export_gguf_lora(model, lora_path)
    merged = merged_model(model).eval()
    plain, adapted = ours(base, prompt), ours(merged, prompt)
    theirs_plain, _ = llama_cpp(base_path, None, prompt)
    theirs, logits = llama_cpp(base_path, lora_path, prompt)
    expected = our_logits(merged, prompt)
    gap = (logits - expected).abs().max().item()
    moved = (expected - our_logits(base, prompt)).abs().max().item()
    label = f"{name}, {'rsLoRA' if rslora else 'LoRA'}"
    print(f"{label:28s} base:    llama.cpp vs centelha {verdict(theirs_plain, plain)}")
    print(f"{label:28s} adapter: llama.cpp vs centelha {verdict(theirs, adapted)}"
          f"   (adapter changes centelha's tokens: {plain != adapted})")
    print(f"{'':28s} prompt logits: max |llama.cpp - centelha| {gap:.2e}; "
          f"the adapter moves them by up to {moved:.2e}")
    print(f"{'':28s} centelha  {adapted}\n{'':28s} llama.cpp {theirs}")
    return theirs == adapted and plain != adapted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true",
                        help="also check on the bundled SmolLM2-135M-Instruct")
    args = parser.parse_args()
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}")
    torch.set_num_threads(2)
    tokenizer = train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 50],
                          vocab_size=400)
    cases = [("tiny llama", tiny_llama(tokenizer.vocab_size), tokenizer, PROMPT)]
    if args.smollm2:
        from centelha import load

        llm = load("smollm2-135m-instruct")
        cases.append(("smollm2", llm.model.eval(), llm.tokenizer,
                      llm.tokenizer.encode("The capital of France is")))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, base, tok, prompt in cases:
            for rslora in (False, True):
                results.append(check(name, base, tok, prompt, Path(tmp), rslora))
    print("all equal" if all(results) else "SOME NOT EQUAL")


if __name__ == "__main__":
    main()
