"""What quantization costs in quality: perplexity of the bundled SmolLM2-135M-Instruct on a
held-out text at each weight format, and the increase over fp32.

The text is the start of Machado de Assis' "Memorial de Aires" (bundled, public domain);
windows of 512 tokens, stride 256. fp32 and bf16 are the GGUF's Q4_1 weights dequantized;
int8 and int4 re-quantize those; native keeps the file's own Q4_1 blocks. Windows are
prefills (more than 64 rows), so the weights are dequantized for the product: this
measures the weight format alone, not the 8-bit activations of the decode kernels.

    python benchmarks/quality.py [--tokens 2048]
"""

from __future__ import annotations

import argparse
import time

import torch

from centelha.evaluate import perplexity
from centelha.loading import load_model
from centelha.quickstart import bundled_corpus

FORMATS = ["fp32", "bf16", "int8", "int4", "native"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--formats", nargs="*", default=FORMATS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    text = (bundled_corpus() / "memorial-de-aires.txt").read_text(encoding="utf-8")[:40_000]
    base = None
    print(f"{'weights':8s} {'perplexity':>10s} {'vs fp32':>8s} {'seconds':>8s}")
    for name in args.formats:
        model, tokenizer, _ = load_model("smollm2-135m-instruct", dtype=name)
        start = time.perf_counter()
        result = perplexity(model, tokenizer, text, window=512, stride=256,
                            max_tokens=args.tokens)
        seconds = time.perf_counter() - start
        base = base or result.perplexity
        change = f"{100 * (result.perplexity / base - 1):+.2f}%"
        print(f"{name:8s} {result.perplexity:10.3f} {change:>8s} {seconds:8.1f}   "
              f"({result.tokens} tokens)")


if __name__ == "__main__":
    main()
