"""The Transformer: causal masking, KV cache, overfitting, sizes, bad input, and the
inference runtime's paths (prefill, chunks, decode steps through the KV cache, with and
without the C++ kernels) against Hugging Face `transformers`."""

import pytest
import torch

from centelha.errors import CentelhaError
from centelha.formats.hf import hf_to_config, hf_to_tensors
from centelha.model import Transformer, count_parameters, flops_per_token, matmul_parameters
from tests.conftest import tiny_config


def make_model(family, **overrides):
    torch.manual_seed(0)
    return Transformer(tiny_config(family, **overrides)).eval()


def test_changing_a_future_token_never_changes_earlier_logits(family):
    model = make_model(family)
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("chunks", [[20], [1] * 20, [7, 1, 5, 1, 6]])
def test_cached_decode_equals_full_forward(family, chunks):
    model = make_model(family)
    x = torch.randint(0, 97, (3, sum(chunks)))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(batch=3)
        pieces, start = [], 0
        for size in chunks:
            pieces.append(model(x[:, start:start + size], cache=cache))
            start += size
    cached = torch.cat(pieces, dim=1)
    assert cache.pos == x.shape[1]
    assert (cached - full).abs().max().item() < 1e-5


def test_last_only_matches_the_last_position(family):
    model = make_model(family)
    x = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        assert torch.allclose(model(x, last_only=True)[:, -1], model(x)[:, -1], atol=1e-6)


def test_a_tiny_batch_overfits_to_near_zero_loss(family):
    model = make_model(family)
    model.train()
    x = torch.randint(0, 97, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        _, loss = model(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0
    assert loss.item() < 0.05


def test_grouped_query_attention_has_fewer_kv_weights():
    gqa = make_model("llama", n_kv_head=1)
    mha = make_model("llama", n_kv_head=4)
    assert gqa.blocks[0].attn.qkv.weight.shape[0] == 32 + 2 * 8
    assert mha.blocks[0].attn.qkv.weight.shape[0] == 3 * 32
    assert count_parameters(gqa) < count_parameters(mha)


def test_parameter_count_and_flops_follow_the_shapes():
    model = make_model("gpt2")  # tied embeddings: the LM head is the token embedding
    cfg = model.cfg
    d, f, v, t, layers = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.block_size, cfg.n_layer
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    assert count_parameters(model) == v * d + t * d + layers * per_layer + 2 * d
    assert matmul_parameters(cfg) == layers * (4 * d * d + 2 * d * f) + d * v
    flops = flops_per_token(cfg, seq_len=16)
    assert flops["forward"] == 2 * matmul_parameters(cfg) + 4 * layers * d * 16
    assert flops["train"] == 3 * flops["forward"]


def test_input_longer_than_the_context_is_a_clear_error(family):
    model = make_model(family)
    with pytest.raises(CentelhaError, match="longer than the context"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("values, message", [
    ({"d_model": 30, "n_head": 4}, "divisible"),
    ({"family": "llama", "n_head": 4, "n_kv_head": 3}, "multiple of n_kv_head"),
    ({"norm": "batchnorm"}, "norm must be one of"),
    ({"d_modle": 32}, "unknown model config key 'd_modle'"),
])
def test_impossible_configs_are_refused(values, message):
    from centelha.config import ModelConfig

    with pytest.raises(CentelhaError, match=message):
        ModelConfig.from_dict(values)


def test_rows_of_different_lengths_decode_together(family):
    model = make_model(family)
    gen = torch.Generator().manual_seed(3)
    sequences = [torch.randint(0, 97, (n,), generator=gen) for n in (5, 11, 2)]
    cache = model.new_cache(batch=3, max_len=32)
    with torch.no_grad():
        for row, seq in enumerate(sequences):  # prefill each row on its own
            model(seq[None], cache=cache, rows=slice(row, row + 1))
        assert cache.lengths == [5, 11, 2]
        for _ in range(4):  # then decode all rows in one call per step
            new = torch.randint(0, 97, (3, 1), generator=gen)
            together = model(new, cache=cache)[:, -1]
            sequences = [torch.cat([s, n]) for s, n in zip(sequences, new, strict=True)]
            for row, seq in enumerate(sequences):
                alone = model(seq[None])[0, -1]
                assert (together[row] - alone).abs().max().item() < 1e-5
    assert cache.lengths == [9, 15, 6]


def test_a_float16_cache_takes_chunks_for_rows_of_different_lengths(family):
    model = make_model(family)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 97, (n,), generator=gen) for n in (5, 2)]
    chunk = torch.randint(0, 97, (2, 3), generator=gen)
    results = []
    for dtype in (torch.float32, torch.float16):
        cache = model.new_cache(batch=2, max_len=32, dtype=dtype)
        with torch.no_grad():
            for row, prompt in enumerate(prompts):
                model(prompt[None], cache=cache, rows=slice(row, row + 1))
            results.append(model(chunk, cache=cache))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=2e-3)


def test_a_model_trains_after_generating(family):
    model = make_model(family)
    with torch.inference_mode():  # rotary tables are made here, on first use
        model(torch.tensor([[1, 2, 3]]))
    model.train()
    _, loss = model(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, 5]]))
    loss.backward()
    assert model.tok_emb.weight.grad is not None


# -- the inference paths against Hugging Face transformers -----------------------------------
HF_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                max_position_embeddings=128)


def hf_and_ours(family: str):
    """A tiny random HF model (llama, or qwen3: q/k norms, head size 24) and ours with its
    weights, norms and biases perturbed so that mixing them up shows."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**HF_SHAPE) if family == "llama" else \
        transformers.Qwen3Config(**HF_SHAPE, head_dim=24)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    cfg = hf_to_config(hf.config.to_dict())
    return hf, Transformer.from_tensors(cfg, hf_to_tensors(dict(hf.state_dict()), cfg))


@pytest.mark.parametrize("lengths", [(9, 14), (11, 11)], ids=["ragged rows", "same lengths"])
@pytest.mark.parametrize("kernels_on", [False, True], ids=["pytorch", "kernels"])
@pytest.mark.parametrize("hf_family", ["llama", "qwen3"])
def test_cached_inference_matches_transformers(hf_family, kernels_on, lengths, request,
                                               monkeypatch):
    """Each row prefilled alone, then both rows continued together by a 6-token chunk, a
    3-token chunk and single-token decode steps: every path the runtime plans (reference
    attention with a cache mask, few-query attention, and with the kernels the fused C++
    step) gives the logits HF computes over the whole sequence."""
    if kernels_on:
        request.getfixturevalue("kernels")
    else:
        monkeypatch.setenv("CENTELHA_NO_KERNELS", "1")
    hf, ours = hf_and_ours(hf_family)
    gen = torch.Generator().manual_seed(2)
    sequences = [torch.randint(0, 300, (n,), generator=gen) for n in lengths]
    cache = ours.new_cache(batch=2, max_len=64)
    with torch.inference_mode():
        for row, seq in enumerate(sequences):
            logits = ours(seq[None], cache=cache, rows=slice(row, row + 1))
            assert (logits - hf(seq[None]).logits).abs().max().item() < 1e-4
        for size in (6, 3, 1, 1, 1):
            new = torch.randint(0, 300, (2, size), generator=gen)
            logits = ours(new, cache=cache)
            sequences = [torch.cat([s, n]) for s, n in zip(sequences, new, strict=True)]
            for row, seq in enumerate(sequences):
                expected = hf(seq[None]).logits[0, -size:]
                assert (logits[row] - expected).abs().max().item() < 1e-4, (size, row)
    assert cache.lengths == [n + 12 for n in lengths]
