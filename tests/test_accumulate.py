"""Gradient accumulation divides by the scored tokens of the whole step, so uneven masks
across micro-batches give the gradient of one big batch."""

import contextlib

import pytest
import torch

from centelha.errors import CentelhaError
from centelha.evaluate import IGNORE, nll_sum
from centelha.model import Transformer
from centelha.objectives.language import LanguageModelling
from centelha.train.accumulate import accumulate_gradients
from centelha.train.distributed import World
from tests.conftest import tiny_config


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def masked_batches(vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two micro-batches: the first scores 2 targets, the second all 24."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randint(0, vocab, (2, 12), generator=g) for _ in range(2))
    y1, y2 = (torch.randint(0, vocab, (2, 12), generator=g) for _ in range(2))
    y1 = torch.full_like(y1, IGNORE).index_put_((torch.tensor([0, 1]), torch.tensor([3, 7])),
                                                y1[[0, 1], [3, 7]])
    return [(x1, y1), (x2, y2)]


def as_dicts(batches):
    return [{"ids": x, "targets": y} for x, y in batches]


def test_uneven_masks_give_the_gradient_of_one_big_batch():
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=64, block_size=16))
    batches = masked_batches(64)
    nothing = lambda *_: contextlib.nullcontext()  # noqa: E731
    loss = accumulate_gradients(LanguageModelling(model, None), model, as_dicts(batches), World(),
                                torch.device("cpu"), nothing, nothing)
    accumulated = grads(model)

    x, y = (torch.cat(parts) for parts in zip(*batches, strict=True))
    big = nll_sum(model(x), y) / 26
    big.backward()
    assert loss == pytest.approx(big.item(), rel=1e-6)
    for a, b in zip(accumulated, grads(model), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)

    for x_i, y_i in batches:  # the usual recipe, mean per micro-batch / 2, differs
        (nll_sum(model(x_i), y_i) / (y_i != IGNORE).sum() / 2).backward()
    naive = grads(model)
    assert max((a - b).abs().max() for a, b in zip(accumulated, naive, strict=True)) > 1e-4


def test_a_step_with_nothing_scored_is_refused():
    model = Transformer(tiny_config("llama", vocab_size=64, block_size=16))
    x = torch.zeros(1, 4, dtype=torch.long)
    nothing = lambda *_: contextlib.nullcontext()  # noqa: E731
    with pytest.raises(CentelhaError, match="nothing in this step"):
        accumulate_gradients(LanguageModelling(model, None), model,
                             as_dicts([(x, torch.full_like(x, IGNORE))]), World(),
                             torch.device("cpu"), nothing, nothing)
