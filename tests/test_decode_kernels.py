"""The decode-step C++ kernels (kernels/decode.cpp) against the PyTorch code they replace.

`attend_one` (rotary + cache write + attention over the cache for one new token per row),
`rms_norm` and `swiglu` are checked directly on shapes that reach every code path (head
sizes that are 4 or 8 vectors wide and ones that are not, several 128-position chunks,
grouped-query heads, float16 caches), and through the model: decoding with the kernels gives
the logits of decoding without them. Last, the loader: a build lock left by a killed build
never makes a later load wait forever.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from centelha import kernels as kernel_loader
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.model import Transformer, apply_rope, rope_inverse_frequencies, rope_tables


def reference_attention(q, k_cache, v_cache, positions):
    """Per row b and head h: softmax(q·K[0…p]ᵀ/√D)·V[0…p], grouped-query heads sharing K/V."""
    B, H, D = q.shape
    group = H // k_cache.shape[1]
    out = torch.empty(B, H, D, dtype=torch.float64)
    for b in range(B):
        p = int(positions[b])
        for h in range(H):
            keys = k_cache[b, h // group, :p + 1].double()
            values = v_cache[b, h // group, :p + 1].double()
            weights = torch.softmax(keys @ q[b, h].double() / math.sqrt(D), dim=0)
            out[b, h] = weights @ values
    return out.reshape(B, H * D)


@pytest.mark.parametrize("head_dim", [8, 48, 64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rope", [True, False])
def test_attend_one_matches_pytorch(kernels, head_dim, heads, kv_heads, dtype, rope):
    gen = torch.Generator().manual_seed(head_dim + heads)
    layers, rows, S, D = 2, 4, 400, head_dim
    row0, layer = 1, 1
    positions = torch.tensor([0, 127, 300])  # one key; a full chunk; three chunks
    B = len(positions)
    qkv = torch.randn(B, heads + 2 * kv_heads, D, generator=gen)
    cache_k = torch.randn(layers, rows, kv_heads, S, D, generator=gen).to(dtype)
    cache_v = torch.randn(layers, rows, kv_heads, S, D, generator=gen).to(dtype)
    if rope:
        cfg = ModelConfig.from_dict(dict(family="llama", vocab_size=10, block_size=S, n_layer=1,
                                         n_head=heads, n_kv_head=kv_heads, d_model=heads * D,
                                         d_ff=8))
        cos, sin = (t.float() for t in rope_tables(rope_inverse_frequencies(cfg), S))
        cos, sin = cos[positions], sin[positions]
    else:
        cos = sin = torch.empty(0)
    expected_k, expected_v = cache_k.clone(), cache_v.clone()

    got = kernels.attend_one(qkv, cos, sin, cache_k, cache_v, layer, row0, positions, heads,
                             kv_heads)

    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
    if rope:  # the model's formula: (B, heads, D) against (B, 1, D) tables
        q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
    for b, p in enumerate(positions.tolist()):
        expected_k[layer, row0 + b, :, p] = k[b].to(dtype)
        expected_v[layer, row0 + b, :, p] = v[b].to(dtype)
    # the cache gets exactly the rotated keys (same formula, same rounding) and the values
    assert torch.equal(cache_k, expected_k)
    assert torch.equal(cache_v, expected_v)
    rows_k = expected_k[layer, row0:row0 + B].float()
    rows_v = expected_v[layer, row0:row0 + B].float()
    expected = reference_attention(q, rows_k, rows_v, positions)
    assert got.shape == (B, heads * D)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_attend_one_is_the_same_alone_or_in_a_batch(kernels):
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, D, S = 6, 2, 64, 512
    qkv = torch.randn(4, heads + 2 * kv_heads, D, generator=gen)
    cache_k = torch.randn(1, 4, kv_heads, S, D, generator=gen)
    cache_v = torch.randn(1, 4, kv_heads, S, D, generator=gen)
    positions = torch.tensor([10, 300, 511, 129])
    empty = torch.empty(0)
    together = kernels.attend_one(qkv, empty, empty, cache_k.clone(), cache_v.clone(), 0, 0,
                                  positions, heads, kv_heads)
    for b in range(4):
        alone = kernels.attend_one(qkv[b:b + 1].contiguous(), empty, empty, cache_k.clone(),
                                   cache_v.clone(), 0, b, positions[b:b + 1], heads, kv_heads)
        assert torch.equal(alone[0], together[b])


def test_attend_one_checks_its_arguments(kernels):
    qkv = torch.randn(1, 6, 8)
    cache = torch.zeros(1, 1, 2, 16, 8)
    empty = torch.empty(0)
    ok = (qkv, empty, empty, cache, cache.clone(), 0, 0, torch.tensor([3]), 2, 2)
    kernels.attend_one(*ok)
    bad = {
        "position past the cache": {7: torch.tensor([16])},
        "negative position": {7: torch.tensor([-1])},
        "wrong head count": {8: 3},
        "row outside": {6: 1},
        "layer outside": {5: 1},
        "int positions": {7: torch.tensor([3], dtype=torch.int32)},
        "bfloat16 cache": {3: cache.bfloat16(), 4: cache.bfloat16()},
        "mixed cache dtypes": {4: cache.half()},
        "short cos": {1: torch.zeros(1, 4), 2: torch.zeros(1, 4)},
    }
    for what, change in bad.items():
        args = list(ok)
        for i, value in change.items():
            args[i] = value
        with pytest.raises(RuntimeError):
            kernels.attend_one(*args)
            pytest.fail(what)


@pytest.mark.parametrize("shape", [(1, 1, 576), (5, 37), (3, 2, 128)])
def test_rms_norm_and_swiglu_match_pytorch(kernels, shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen) * 3
    weight = torch.randn(shape[-1], generator=gen)
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5),
                               F.rms_norm(x, (shape[-1],), weight, 1e-5), rtol=1e-5, atol=1e-6)
    h = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen) * 4
    gate, up = h.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.swiglu(h), F.silu(gate) * up, rtol=1e-5, atol=1e-6)


def decode_logits(model, prompts, steps, cache_dtype=None):
    """Prefill ragged prompts row by row, then decode `steps` tokens for all rows together;
    returns the logits of every decode step."""
    torch.manual_seed(0)
    cache = model.new_cache(len(prompts), 64, dtype=cache_dtype)
    with torch.inference_mode():
        for row, prompt in enumerate(prompts):
            model(torch.tensor([prompt]), cache=cache, rows=slice(row, row + 1))
        tokens = torch.tensor([[p[-1]] for p in prompts])
        out = []
        for _ in range(steps):
            logits = model(tokens, cache=cache, last_only=True)
            out.append(logits)
            tokens = logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(out)


@pytest.mark.parametrize("overrides", [
    dict(family="llama", n_head=4, n_kv_head=2, d_model=256, d_ff=128),   # head size 64
    dict(family="llama", n_head=4, n_kv_head=4, d_model=32, d_ff=64, qk_norm=True),
    dict(family="gpt2", n_head=2, d_model=32),                            # no rotary
])
def test_model_decodes_the_same_with_and_without_kernels(kernels, monkeypatch, overrides):
    cfg = ModelConfig.from_dict(dict(vocab_size=97, block_size=64, n_layer=2, **overrides))
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    with_kernels = decode_logits(model, prompts, 6)
    monkeypatch.setenv("CENTELHA_NO_KERNELS", "1")
    without = decode_logits(model, prompts, 6)
    torch.testing.assert_close(with_kernels, without, rtol=1e-5, atol=1e-5)


def test_float16_cache_stays_close(kernels):
    cfg = ModelConfig.from_dict(dict(family="llama", vocab_size=97, block_size=64, n_layer=2,
                                     n_head=4, n_kv_head=2, d_model=256, d_ff=128))
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    full = decode_logits(model, prompts, 4)
    half = decode_logits(model, prompts, 4, cache_dtype=torch.float16)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0, atol=2e-3)


# -- the loader: torch's build lock ----------------------------------------------------------
def age(folder: Path, seconds: float) -> None:
    """Make every file in `folder` look last changed `seconds` ago."""
    then = time.time() - seconds
    for entry in folder.iterdir():
        os.utime(entry, (then, then))


def test_a_stale_build_lock_is_removed(tmp_path):
    (tmp_path / "lock").touch()
    (tmp_path / "lowbit.o").touch()  # a build killed halfway
    age(tmp_path, 3600)
    with pytest.warns(RuntimeWarning, match="lock left by a stopped build"):
        kernel_loader.wait_for_other_build(tmp_path)
    assert not (tmp_path / "lock").exists()
    assert (tmp_path / "lowbit.o").exists()


def test_a_build_making_progress_is_waited_for(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()

    def builder():  # writes a file every 0.1 s for longer than stale_after, then unlocks
        for i in range(12):
            (tmp_path / f"part{i}.o").touch()
            time.sleep(0.1)
        lock.unlink()

    thread = threading.Thread(target=builder)
    start = time.monotonic()
    thread.start()
    kernel_loader.wait_for_other_build(tmp_path, stale_after=0.5, poll=0.02)
    waited = time.monotonic() - start
    thread.join()
    assert waited > 1.0  # the builder's lock was not taken for a stale one


def test_an_unremovable_stale_lock_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "lock").touch()
    age(tmp_path, 3600)

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(CentelhaError, match="lock .* cannot be removed") as error:
        kernel_loader.wait_for_other_build(tmp_path)
    assert str(tmp_path / "lock") in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.slow  # a Python start-up
def test_kernels_load_despite_a_stale_lock(kernels, tmp_path):
    """The real loader in a fresh process (torch rebuilds an extension that one process has
    loaded from another folder), over a copy of this session's build with a lock left in it."""
    built = Path(kernel_loader.kernel_info()["build_dir"])
    root = tmp_path / "cache"
    shutil.copytree(built, root / built.name)  # file times kept: ninja finds it up to date
    (root / built.name / "lock").touch()
    script = ("import centelha.kernels as k; k.STALE_LOCK_SECONDS = 1.0; "
              "print(k.build_kernels().simd())")
    env = {**os.environ, "CENTELHA_KERNEL_DIR": str(root)}
    env.pop("CENTELHA_NO_KERNELS", None)
    try:
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the kernels waited on the stale lock")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == kernels.simd()
    assert not (root / built.name / "lock").exists()
