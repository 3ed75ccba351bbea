"""Quantized linear layers (centelha.quant) and the low-bit C++ kernels (centelha.kernels).

Three references keep the kernels honest:
- `emulate`: the kernels' own arithmetic (int8 activations per 32-block, integer dot
  products, scales applied per block) in float64 PyTorch; the kernels must match it to float
  rounding, which checks the block layouts, nibble order and every SIMD code path;
- `F.linear(x, dequantize())`: the exact product with the stored weights; the kernels differ
  from it only by the activations' int8 rounding (≈ 0.5%, bound 1.5%);
- `gguf.quants.dequantize` (llama.cpp's numpy reference) for GGUF blocks.

The first kernel test builds the extension (≈ 15-30 s once, then cached in
~/.cache/centelha/kernels). On a machine that has g++ and ninja a failed build fails the
kernel tests instead of skipping them, so a broken kernel cannot hide behind the fallback.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants
from safetensors.torch import load_file, save_file
from torch import nn

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.kernels import load_kernels
from centelha.model import Transformer
from centelha.quant import (
    DECODE_MAX_ROWS,
    QuantLinear,
    apply_quantized_state,
    dequantize_model,
    dequantize_q4,
    dequantize_q8,
    is_quantized,
    q4_matmul,
    q8_matmul,
    quantize_model,
    quantized_state,
)

# N odd; K = 19 blocks: two groups of 8 and a tail of 3 (AVX-512 goes by pairs of blocks).
N, K = 67, 32 * 19


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm()).item()


def random_q8(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    qweight = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scales = (torch.rand(n, k // 32, generator=gen) * 0.01 + 0.001).half()
    return qweight, scales


def random_q4(n: int, k: int, gen: torch.Generator):
    qweight = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(n, k // 32, generator=gen) * 0.01 + 0.001).half()
    mins = (torch.randn(n, k // 32, generator=gen) * 0.05).half()
    return qweight, scales, mins


def emulate(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
            mins: torch.Tensor | None = None) -> torch.Tensor:
    """The kernels' arithmetic in float64: same int8 activations, same float32 scale products."""
    m, k = x.shape
    n = qweight.shape[0]
    blocks = x.view(m, k // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    # 127 / amax correctly rounded to float32 as in C++ (torch's `127 / t` is 127 · (1 / t))
    inverse = torch.where(amax > 0, (127 / amax.double()).float(), torch.zeros_like(amax))
    xq = torch.round(blocks * inverse.unsqueeze(-1))                     # ties to even
    xs = amax / 127
    if mins is None:
        wq = qweight.view(n, k // 32, 32)
    else:
        packed = qweight.view(n, k // 32, 16)
        wq = torch.cat([packed & 0x0F, packed >> 4], dim=-1)
    dots = torch.einsum("mbj,nbj->mnb", xq.double(), wq.double())        # exact integers
    scale = (scales.float().unsqueeze(0) * xs.unsqueeze(1)).double()       # [m, n, blocks]
    y = (dots * scale).sum(-1)
    if mins is not None:
        block_sums = (xs * xq.sum(-1)).double()                            # [m, blocks]
        y = y + block_sums @ mins.double().T
    return y


# --------------------------------------------------------------------------------------------
# Kernels against references.

# 1: tiles of 4 weight rows × 1; 2: 2 × 2; 3, 5, 8, 17: 1 × 4 (+ the rest)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17])
def test_q8_kernel_matches_references(kernels, rows):
    gen = torch.Generator().manual_seed(rows)
    qweight, scales = random_q8(N, K, gen)
    x = torch.randn(rows, K, generator=gen)
    got = kernels.q8_matmul(x, qweight, scales)
    assert got.shape == (rows, N) and got.dtype == torch.float32
    assert rel_error(got, emulate(x, qweight, scales)) < 1e-5
    exact = F.linear(x, dequantize_q8(qweight, scales, use_kernels=False))
    assert rel_error(got, exact) < 0.015
    fallback = q8_matmul(x, qweight, scales, use_kernels=False)
    assert torch.allclose(fallback, exact, rtol=1e-5, atol=1e-5)
    assert rel_error(got, fallback) < 0.015


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17])
def test_q4_kernel_matches_references(kernels, rows):
    gen = torch.Generator().manual_seed(100 + rows)
    qweight, scales, mins = random_q4(N, K, gen)
    x = torch.randn(rows, K, generator=gen)
    got = kernels.q4_matmul(x, qweight, scales, mins)
    assert got.shape == (rows, N)
    assert rel_error(got, emulate(x, qweight, scales, mins)) < 1e-5
    exact = F.linear(x, dequantize_q4(qweight, scales, mins, use_kernels=False))
    assert rel_error(got, exact) < 0.015
    assert rel_error(got, q4_matmul(x, qweight, scales, mins, use_kernels=False)) < 0.015


def test_kernel_dequantize_equals_pytorch(kernels):
    gen = torch.Generator().manual_seed(7)
    qweight, scales = random_q8(N, K, gen)
    assert torch.equal(kernels.q8_dequantize(qweight, scales),
                       dequantize_q8(qweight, scales, use_kernels=False))
    qweight, scales, mins = random_q4(N, K, gen)
    assert torch.equal(kernels.q4_dequantize(qweight, scales, mins),
                       dequantize_q4(qweight, scales, mins, use_kernels=False))


def test_kernels_give_the_same_answer_on_any_thread_count(kernels):
    gen = torch.Generator().manual_seed(8)
    qweight, scales, mins = random_q4(512, 576, gen)
    x = torch.randn(2, 576, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.q4_matmul(x, qweight, scales, mins)
        torch.set_num_threads(2)
        two = kernels.q4_matmul(x, qweight, scales, mins)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each output row is computed whole by one thread


def test_kernels_check_their_arguments(kernels):
    qweight, scales = random_q8(4, 64, torch.Generator().manual_seed(9))
    with pytest.raises(RuntimeError, match="features"):
        kernels.q8_matmul(torch.randn(1, 96), qweight, scales)
    with pytest.raises(RuntimeError, match="float32"):
        kernels.q8_matmul(torch.randn(1, 64, dtype=torch.float64), qweight, scales)
    with pytest.raises(RuntimeError, match="int8"):
        kernels.q8_matmul(torch.randn(1, 64), qweight.to(torch.uint8), scales)


def test_fallback_without_kernels(monkeypatch):
    monkeypatch.setenv("CENTELHA_NO_KERNELS", "1")
    assert load_kernels() is None
    layer = QuantLinear.from_linear(nn.Linear(64, 48), "int4")
    x = torch.randn(3, 64)
    expected = F.linear(x, layer.dequantize(), layer.bias)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    with pytest.raises(CentelhaError, match="not available"):
        q8_matmul(x, torch.zeros(8, 64, dtype=torch.int8), torch.zeros(8, 2).half(),
                  use_kernels=True)


def test_prefill_rows_use_dequantized_gemm(kernels):
    layer = QuantLinear.from_linear(nn.Linear(K, N), "int8")
    x = torch.randn(2, DECODE_MAX_ROWS // 2 + 1, K)  # more rows than DECODE_MAX_ROWS
    expected = F.linear(x, layer.dequantize(), layer.bias)
    assert torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Quantizing float layers.

def test_int8_per_channel_from_linear():
    torch.manual_seed(0)
    linear = nn.Linear(576, 96)
    layer = QuantLinear.from_linear(linear, "int8")
    assert layer.qweight.dtype == torch.int8 and layer.scales.shape == (96, 18)
    assert (layer.scales == layer.scales[:, :1]).all()  # one scale per row, in every block
    w = linear.weight.detach()
    step = (w.abs().amax(dim=1, keepdim=True) / 127)
    error = (layer.dequantize() - w).abs()
    assert (error <= 0.5 * step * 1.01 + 1e-8).all()  # rounding to the nearest step
    assert rel_error(layer.dequantize(), w) < 0.015
    x = torch.randn(4, 576)
    assert rel_error(layer(x), linear(x)) < 0.02


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_groups_from_linear(group_size):
    torch.manual_seed(group_size)
    linear = nn.Linear(576, 80, bias=False)  # 576 = 4.5 groups of 128: a short last group
    layer = QuantLinear.from_linear(linear, "int4", group_size)
    assert layer.qweight.shape == (80, 288) and layer.mins.shape == (80, 18)
    per = group_size // 32
    assert (layer.scales[:, :per] == layer.scales[:, :1]).all()
    w = linear.weight.detach()
    # Gaussian weights, min/max ranges: step ≈ 4σ/15, rms error step/√12 ≈ 8% (a little
    # more for longer groups); the least-squares range fit (whole groups) must do better.
    bound = 0.12 if group_size == 128 else 0.075
    assert rel_error(layer.dequantize(), w) < bound
    x = torch.randn(5, 576)
    assert rel_error(layer(x), linear(x)) < 0.13


def test_forward_keeps_leading_dims_and_dtype():
    layer = QuantLinear.from_linear(nn.Linear(64, 40), "int8")
    x = torch.randn(2, 3, 64)
    assert layer(x).shape == (2, 3, 40)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_input_needing_gradients_gets_them():
    layer = QuantLinear.from_linear(nn.Linear(64, 40), "int4")
    x = torch.randn(1, 64, requires_grad=True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, layer.dequantize().sum(0), atol=1e-5)


# --------------------------------------------------------------------------------------------
# GGUF blocks.

@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_load_exactly(name):
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((48, 256)) * 0.05).astype(np.float32)
    qtype = GGMLQuantizationType[name]
    raw = quants.quantize(weight, qtype)
    layer = QuantLinear.from_gguf_blocks(raw, name, (48, 256))
    assert layer.method == ("int8" if name == "Q8_0" else "int4")
    np.testing.assert_array_equal(layer.dequantize().numpy(), quants.dequantize(raw, qtype))


def q4_k_bytes(rng: np.random.Generator, rows: int, supers: int) -> np.ndarray:
    """Random Q4_K super-blocks built field by field (gguf-py cannot quantize Q4_K)."""
    d = (rng.random((rows, supers, 1)) * 0.01 + 1e-3).astype(np.float16)
    dmin = (rng.random((rows, supers, 1)) * 0.01 + 1e-3).astype(np.float16)
    sc = rng.integers(0, 64, (rows, supers, 8), dtype=np.uint8)
    m = rng.integers(0, 64, (rows, supers, 8), dtype=np.uint8)
    packed = np.concatenate([
        (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6),   # scales 0-3, top bits of scales 4-7
        (m[..., :4] & 63) | ((m[..., 4:] >> 4) << 6),     # mins 0-3, top bits of mins 4-7
        (sc[..., 4:] & 15) | ((m[..., 4:] & 15) << 4),    # low bits of scales/mins 4-7
    ], axis=-1).astype(np.uint8)
    qs = rng.integers(0, 256, (rows, supers, 128), dtype=np.uint8)
    blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, qs], axis=-1)
    return blocks.reshape(rows, supers * 144)


def test_gguf_q4_k_converts_to_q4_blocks():
    raw = q4_k_bytes(np.random.default_rng(2), 24, 3)
    layer = QuantLinear.from_gguf_blocks(raw, "Q4_K", (24, 768))
    reference = quants.dequantize(raw, GGMLQuantizationType.Q4_K)
    ours = layer.dequantize().numpy()
    # d·sc and dmin·m are stored in fp16 (our Q4 format): ≤ 2^-11 relative per scale
    assert np.abs(ours - reference).max() <= 1e-3 * np.abs(reference).max()
    x = torch.randn(2, 768)
    assert rel_error(layer(x), F.linear(x, torch.from_numpy(reference))) < 0.015


def test_gguf_q8_0_minus_128_is_clamped():
    # ggml never writes -128; AVX2's sign trick could not multiply it, so loading clamps it
    block = np.zeros(34, np.uint8)
    block[:2] = np.array([0.5], np.float16).view(np.uint8)
    block[2:] = np.array([-128, 127] + [0] * 30, np.int8).view(np.uint8)
    layer = QuantLinear.from_gguf_blocks(block, "Q8_0", (1, 32))
    assert layer.dequantize()[0, :2].tolist() == [-63.5, 63.5]


def test_gguf_bad_input():
    raw = quants.quantize(np.zeros((4, 64), np.float32), GGMLQuantizationType.Q8_0)
    with pytest.raises(CentelhaError, match="bytes"):
        QuantLinear.from_gguf_blocks(raw[:, :-1], "Q8_0", (4, 64))
    with pytest.raises(CentelhaError, match="not supported"):
        QuantLinear.from_gguf_blocks(raw, "Q5_K", (4, 64))
    with pytest.raises(CentelhaError, match="multiple of 256"):
        QuantLinear.from_gguf_blocks(raw, "Q4_K", (4, 64))


# --------------------------------------------------------------------------------------------
# Whole models.

def tiny_llama() -> Transformer:
    cfg = ModelConfig.from_dict(dict(family="llama", vocab_size=97, block_size=32, n_layer=2,
                                     n_head=4, n_kv_head=2, d_model=64, d_ff=128))
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def greedy(model: Transformer, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy continuation through the KV cache: one token per row per step (decode path)."""
    cache = model.new_cache(prompt.shape[0])
    logits = model(prompt, cache=cache, last_only=True)
    out = []
    for _ in range(steps):
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(token)
        logits = model(token, cache=cache, last_only=True)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("method, bound, agreement", [("int8", 0.02, 0.9), ("int4", 0.15, 0.75)])
@torch.no_grad()
def test_quantized_model_stays_close(method, bound, agreement):
    # Bounds: per-layer weight error ≈ 0.6% (int8 per row) / 8% (int4 per 32) on these random
    # Gaussian weights, plus ≈ 0.5% from int8 activations; logits measured at 0.7% / 9%.
    model = tiny_llama()
    quantized = quantize_model(copy.deepcopy(model), method)
    names = {n for n, m in quantized.named_modules() if isinstance(m, QuantLinear)}
    assert {"lm_head", "blocks.0.attn.qkv", "blocks.1.mlp.fc_out"} <= names
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    ref, out = model(idx), quantized(idx)
    assert rel_error(out, ref) < bound
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= agreement
    prompt = idx[:, :4]
    assert (greedy(quantized, prompt, 6)[:, 0] == greedy(model, prompt, 6)[:, 0]).all()


@torch.no_grad()
def test_tied_head_gets_its_own_copy():
    cfg = ModelConfig.from_dict(dict(family="gpt2", vocab_size=97, block_size=32, n_layer=2,
                                     n_head=4, d_model=64))
    model = Transformer(cfg).eval()
    embedding = model.tok_emb.weight.detach().clone()
    idx = torch.randint(0, 97, (1, 8))
    ref = model(idx)
    quantize_model(model, "int8")
    assert isinstance(model.lm_head, QuantLinear) and isinstance(model.tok_emb, nn.Embedding)
    assert torch.equal(model.tok_emb.weight, embedding)  # the embedding stays float
    assert rel_error(model(idx), ref) < 0.02


@torch.no_grad()
def test_is_quantized_follows_quantize_and_dequantize():
    model = tiny_llama()
    assert not is_quantized(model)
    quantize_model(model, "int4")
    assert is_quantized(model)
    layers = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert dequantize_model(model) == layers and not is_quantized(model)


@pytest.mark.parametrize("method", ["int8", "int4"])
@torch.no_grad()
def test_quantized_state_round_trip(tmp_path, method):
    model = quantize_model(tiny_llama(), method, group_size=64)
    tensors, description = quantized_state(model)
    assert description["method"] == method and "lm_head" in description["layers"]
    save_file(tensors, tmp_path / "model.safetensors")
    description = json.loads(json.dumps(description))
    fresh = tiny_llama()
    torch.manual_seed(1)
    fresh.apply(fresh._init_weights)  # different float weights: everything must come from the file
    apply_quantized_state(fresh, load_file(tmp_path / "model.safetensors"), description)
    idx = torch.randint(0, 97, (2, 12))
    assert torch.equal(fresh(idx), model(idx))
    assert torch.equal(greedy(fresh, idx[:, :3], 4), greedy(model, idx[:, :3], 4))


def test_apply_quantized_state_refuses_a_mismatch():
    tensors, description = quantized_state(quantize_model(tiny_llama(), "int8"))
    description["layers"].append("blocks.0.norm1")
    with pytest.raises(CentelhaError, match="not a linear layer"):
        apply_quantized_state(tiny_llama(), tensors, description)


# --------------------------------------------------------------------------------------------
# Refusals.

def test_bad_input_is_refused():
    with pytest.raises(CentelhaError, match="multiple of 32"):
        QuantLinear.from_linear(nn.Linear(48, 8), "int8")
    with pytest.raises(CentelhaError, match="multiple of 32"):
        QuantLinear(100, 8)
    with pytest.raises(CentelhaError, match="unknown quantization method"):
        QuantLinear.from_linear(nn.Linear(64, 8), "int3")
    with pytest.raises(CentelhaError, match="group size"):
        QuantLinear.from_linear(nn.Linear(64, 8), "int4", group_size=16)
    with pytest.raises(CentelhaError, match="group size"):
        quantize_model(tiny_llama(), "int4", group_size=96)
    with pytest.raises(CentelhaError, match="multiple of 32"):
        quantize_model(nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 8)), "int8")
    broken = nn.Linear(64, 8)
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(CentelhaError, match="NaN"):
        QuantLinear.from_linear(broken, "int8")
    with pytest.raises(CentelhaError, match="expects 64"):
        QuantLinear.from_linear(nn.Linear(64, 8), "int8")(torch.randn(2, 32))
