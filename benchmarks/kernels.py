"""Low-bit decode kernels: µs per matrix-vector product, fp32 `F.linear` vs our Q8 and Q4.

The shapes are SmolLM2-135M's (hidden 576, 9 query + 3 KV heads of 64, MLP 1536, vocab
49,152): fused q/k/v 576→960, attention output 576→576, fused gate-up 576→3072, up 576→1536,
down 1536→576 and the 49,152×576 LM head. Every function is timed in this one process, same
threads, alternating rounds (median of rounds), on the same random weights:
- fp32: `F.linear(x, W)`;
- Q8 / Q4: the C++ kernels called directly (`q8_matmul`, `q4_matmul`; Q4 = int4 groups of 32);
- Q4 layer: `QuantLinear.forward`, i.e. the kernel plus the Python around it.

By default one copy of each matrix is reused, so the smaller ones are read from cache: the
kernels' best case. `--copies 30` cycles through 30 different copies (SmolLM2 has 30 layers),
so weights come from memory as in a real decode step. The LM head is larger than the cache
in every column, as it is in a real decode step. The last lines add up one token
(30 × qkv, out, gate-up, down + the LM head) as a ceiling on tokens/s.

    python benchmarks/kernels.py [--threads 2] [--rows 1] [--rounds 7] [--copies 1] [--arch haswell]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from centelha.kernels import kernel_info, load_kernels
from centelha.quant import QuantLinear

# (name, in_features, out_features, uses per token)
SHAPES = [
    ("up 576→1536", 576, 1536, 0),
    ("down 1536→576", 1536, 576, 30),
    ("qkv 576→960", 576, 960, 30),
    ("out 576→576", 576, 576, 30),
    ("gate-up 576→3072", 576, 3072, 30),
    ("lm head 576→49152", 576, 49152, 1),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_round(fn: Callable[[int], object], calls: int) -> float:
    """Seconds per call over `calls` calls; fn gets the call index (to pick a copy)."""
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls


def measure(fns: dict[str, Callable[[int], object]], rounds: int, budget: float = 0.03):
    """Median µs per call of each function, rounds alternating between them."""
    calls = {}
    for name, fn in fns.items():
        fn(0)  # warm up (and the first call of a kernel variant)
        once = time_round(fn, 3)
        calls[name] = max(3, int(budget / max(once, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_round(fn, calls[name]))
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}


def layers_for(k: int, n: int, copies: int):
    """`copies` random fp32 weights and their Q8 / Q4 layers."""
    weights, q8, q4 = [], [], []
    for _ in range(copies):
        linear = nn.Linear(k, n, bias=False)
        nn.init.normal_(linear.weight, std=0.02)
        weights.append(linear.weight.detach())
        q8.append(QuantLinear.from_linear(linear, "int8"))
        q4.append(QuantLinear.from_linear(linear, "int4", group_size=32))
    return weights, q8, q4


def functions(kernels, rows: int, k: int, weights: list, q8: list, q4: list) -> dict:
    """The four contestants for one shape; call i uses copy i % copies."""
    x = torch.randn(rows, k)
    w8 = [(layer.qweight, layer.scales) for layer in q8]  # buffers fetched once, outside timing
    w4 = [(layer.qweight, layer.scales, layer.mins) for layer in q4]
    # The layer gets its own copy of the weights: right after the Q4 round, the same bytes
    # would still sit in the last-level cache and flatter it.
    layers = [copy.deepcopy(layer) for layer in q4]
    copies = len(weights)
    return {
        "fp32": lambda i: F.linear(x, weights[i % copies]),
        "q8": lambda i: kernels.q8_matmul(x, *w8[i % copies]),
        "q4": lambda i: kernels.q4_matmul(x, *w4[i % copies]),
        "q4 layer": lambda i: layers[i % copies](x),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1, help="activation rows (decode batch)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--copies", type=int, default=1, help="distinct weights per shape")
    parser.add_argument("--arch", default=None, help="-march= for the kernels (default native)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.arch:  # QuantLinear (the "Q4 layer" column) then loads the same variant
        os.environ["CENTELHA_KERNEL_ARCH"] = args.arch
    start = time.perf_counter()
    kernels = load_kernels()
    ready = time.perf_counter() - start
    if kernels is None:
        raise SystemExit(f"the kernels are not available: {kernel_info()['error']}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    arch = args.arch or os.environ.get("CENTELHA_KERNEL_ARCH") or "native"
    print(f"kernels: {kernels.simd()} (-march={arch}), ready in {ready:.1f} s "
          "(build or cache load)")
    print(f"rows {args.rows}, copies {args.copies}, median of {args.rounds} alternating rounds\n")
    header = f"{'shape':<20}{'fp32 µs':>10}{'Q8 µs':>10}{'Q4 µs':>10}{'Q4 layer':>10}" \
             f"{'fp32/Q8':>9}{'fp32/Q4':>9}"
    print(header)
    print("-" * len(header))
    totals = {"fp32": 0.0, "q8": 0.0, "q4": 0.0, "q4 layer": 0.0}
    with torch.inference_mode():
        for name, k, n, per_token in SHAPES:
            copies = 1 if n > 10_000 else args.copies  # one LM head per model
            weights, q8, q4 = layers_for(k, n, copies)
            us = measure(functions(kernels, args.rows, k, weights, q8, q4), args.rounds)
            for key in totals:
                totals[key] += per_token * us[key]
            print(f"{name:<20}{us['fp32']:>10.1f}{us['q8']:>10.1f}{us['q4']:>10.1f}"
                  f"{us['q4 layer']:>10.1f}{us['fp32'] / us['q8']:>8.2f}×"
                  f"{us['fp32'] / us['q4']:>8.2f}×")
            del weights, q8, q4
    print("\none token's products (30 layers × qkv, out, gate-up, down + LM head):")
    for key, total in totals.items():
        print(f"  {key:<9} {total / 1000:7.2f} ms  → ≤ {args.rows * 1e6 / total:6.0f} tok/s")


if __name__ == "__main__":
    main()
