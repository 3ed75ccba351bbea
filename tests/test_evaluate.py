"""Perplexity: matches the model's own loss, counts every token once, bits per byte over
the bytes scored, files and folders, the CLI equal to the library, refuses bad input."""

import json
import math
import unicodedata

import pytest
import torch
from typer.testing import CliRunner

from centelha.checkpoint import save_model_files
from centelha.cli import app
from centelha.errors import CentelhaError
from centelha.evaluate import perplexity, perplexity_of_files
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


def test_bits_per_byte_is_total_nats_over_the_bytes_scored(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = "A ação é rápida: coração, pão e maçã. " * 3
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        _, loss = model(ids[:, :-1], ids[:, 1:])
    # the first token has nothing before it, so its bytes are not scored
    scored = len(text.encode("utf-8")) - len(tok.decode([ids[0, 0].item()]).encode("utf-8"))
    result = perplexity(model, tok, text)
    assert result.bytes == scored
    direct = loss.item() * (ids.shape[1] - 1) / (math.log(2) * scored)
    assert result.bits_per_byte == pytest.approx(direct, rel=1e-5)


def test_the_library_normalises_as_the_cli_does(model_and_tokenizer):
    model, tok = model_and_tokenizer
    decomposed = unicodedata.normalize("NFD", "A ação é rápida e o pão é bom. " * 4)
    composed = unicodedata.normalize("NFC", decomposed)
    assert perplexity(model, tok, decomposed).nll == perplexity(model, tok, composed).nll
    assert perplexity(model, tok, decomposed, normalise=False).nll != pytest.approx(
        perplexity(model, tok, composed).nll)


def test_files_and_folders_are_scored_each_and_pooled(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "books" / "b.txt").write_text("O menino leu um livro. " * 6, encoding="utf-8")
    (tmp_path / "books" / "notes.md").write_text("not a .txt file", encoding="utf-8")
    single = tmp_path / "c.txt"
    single.write_text("Era uma vez um menino. " * 5, encoding="utf-8")
    report = perplexity_of_files(model, tok, [tmp_path / "books", single])
    assert list(report.files) == [str(tmp_path / "books" / "a.txt"),
                                  str(tmp_path / "books" / "b.txt"), str(single)]
    assert report.files[str(single)].nll == perplexity(model, tok, single.read_text()).nll
    parts = list(report.files.values())
    assert report.overall.tokens == sum(p.tokens for p in parts)
    assert report.overall.bytes == sum(p.bytes for p in parts)
    total_nats = sum(p.nll * p.tokens for p in parts)
    assert report.overall.nll == pytest.approx(total_nats / report.overall.tokens)
    assert report.overall.bits_per_byte == pytest.approx(
        total_nats / (math.log(2) * report.overall.bytes))


def test_missing_or_empty_inputs_are_named(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    with pytest.raises(CentelhaError, match="not found: .*nowhere.txt"):
        perplexity_of_files(model, tok, [tmp_path / "nowhere.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CentelhaError, match="no .txt files in the folder"):
        perplexity_of_files(model, tok, [tmp_path / "empty"])
    (tmp_path / "short.txt").write_text("a", encoding="utf-8")
    with pytest.raises(CentelhaError, match="short.txt: the text is too short"):
        perplexity_of_files(model, tok, [tmp_path / "short.txt"])


def test_the_cli_prints_and_writes_what_the_library_computes(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    folder = tmp_path / "model"
    save_model_files(folder, model, tok)
    text = tmp_path / "t.txt"
    text.write_text(unicodedata.normalize("NFD", "A ação é rápida e o pão é bom. " * 4),
                    encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", "perplexity", str(folder), "--text", str(text),
                                      "--json", str(tmp_path / "ppl.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "ppl.json").read_text())
    expected = perplexity(model, tok, text.read_text(encoding="utf-8"))
    assert figures["overall"]["nats_per_token"] == pytest.approx(expected.nll, rel=1e-6)
    assert figures["overall"]["bits_per_byte"] == pytest.approx(expected.bits_per_byte,
                                                                rel=1e-6)
    assert f"{expected.perplexity:.3f}" in result.output
    missing = CliRunner().invoke(app, ["eval", "perplexity", str(folder), "--text",
                                       str(tmp_path / "nope.txt")])
    assert isinstance(missing.exception, CentelhaError)
    assert "not found" in str(missing.exception)


@pytest.mark.slow
def test_smollm2_perplexity_equals_transformers_on_the_same_weights(smollm2_llm, tmp_path):
    # the independent computation is the sliding-window recipe of the transformers docs,
    # run by transformers itself on our dequantized weights written as an HF folder
    transformers = pytest.importorskip("transformers")
    from centelha.formats.hf import save_hf
    from centelha.quickstart import bundled_corpus

    text = unicodedata.normalize("NFC", (bundled_corpus() / "memorial-de-aires.txt").read_text(
        encoding="utf-8")[20_000:24_000])
    window, stride = 256, 128
    ours = perplexity(smollm2_llm.model, smollm2_llm.tokenizer, text, window, stride)
    folder = save_hf(smollm2_llm.model, smollm2_llm.tokenizer, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([smollm2_llm.tokenizer.encode(text)])
    total, scored, previous_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, ids.shape[1], stride):
            end = min(begin + window, ids.shape[1])
            labels = ids[:, begin:end].clone()
            labels[:, :-(end - previous_end)] = -100
            counted = int((labels[:, 1:] != -100).sum())
            total += hf(ids[:, begin:end], labels=labels).loss.item() * counted
            scored, previous_end = scored + counted, end
            if end == ids.shape[1]:
                break
    assert ours.tokens == scored
    assert ours.perplexity == pytest.approx(math.exp(total / scored), rel=5e-3)
