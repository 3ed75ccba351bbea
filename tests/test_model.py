"""The Transformer: causal masking, KV cache, overfitting, sizes, bad input."""

import pytest
import torch

from centelha.errors import CentelhaError
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
