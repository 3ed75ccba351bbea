"""Perplexity: matches the model's own loss, counts every token once, refuses bad input."""

import math

import pytest
import torch

from centelha.errors import CentelhaError
from centelha.evaluate import perplexity
from centelha.model import Transformer
from centelha.tokenizer import train_bpe
from tests.conftest import tiny_config

TEXT = "Era uma vez uma menina que gostava muito de ler livros de aventura e de poesia. " * 4


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_bpe(["Era uma vez um menino. " * 50], vocab_size=300)
    torch.manual_seed(0)
    return Transformer(tiny_config("llama", vocab_size=tok.vocab_size, block_size=512)), tok


def test_one_window_equals_the_model_loss(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        _, loss = model(ids[:, :-1], ids[:, 1:])
    result = perplexity(model, tok, TEXT)
    assert result.tokens == ids.shape[1] - 1
    assert result.nll == pytest.approx(loss.item(), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(loss.item()), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 8, 16])
def test_sliding_windows_score_every_token_once(model_and_tokenizer, stride):
    model, tok = model_and_tokenizer
    n = len(tok.encode(TEXT))
    assert perplexity(model, tok, TEXT, window=32, stride=stride).tokens == n - 1


def test_more_context_helps_a_trained_model(model_and_tokenizer):
    # a model that learnt the text predicts a repeat from context it can see: the same
    # tokens, scored with 63 tokens of context instead of at most 3, are far less surprising
    _, tok = model_and_tokenizer
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=tok.vocab_size, block_size=256))
    ids = torch.tensor([tok.encode(TEXT)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    short = perplexity(model, tok, TEXT, window=4, stride=2)
    long = perplexity(model, tok, TEXT, window=64, stride=16)
    assert short.tokens == long.tokens == ids.shape[1] - 1
    assert long.perplexity < 0.5 * short.perplexity


def test_bad_input(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(CentelhaError, match="too short"):
        perplexity(model, tok, "a")
    with pytest.raises(CentelhaError, match="stride"):
        perplexity(model, tok, TEXT, window=16, stride=32)
