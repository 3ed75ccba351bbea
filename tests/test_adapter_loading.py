"""`centelha.load(..., adapter=)` and `--adapter`: an adapter merged into the model it was
trained on, refused on any other."""

import pytest
import torch
from typer.testing import CliRunner

from centelha import load
from centelha.checkpoint import save_model_files
from centelha.cli import app
from centelha.errors import CentelhaError
from centelha.lora import lora_layers
from centelha.model import Transformer
from tests.conftest import tiny_config


@torch.no_grad()
def test_an_adapter_is_merged_into_the_weights_it_was_trained_on(base_and_adapter):
    base, adapter, adapted = base_and_adapter
    ids = torch.randint(0, adapted.cfg.vocab_size, (2, 10))
    plain, merged = load(base), load(base, adapter=adapter)
    assert merged.info["adapter"] == str(adapter)
    assert torch.allclose(merged.model(ids), adapted(ids), atol=1e-5)
    assert not torch.allclose(plain.model(ids), adapted(ids), atol=1e-3)
    assert not list(lora_layers(merged.model))  # merged: plain layers, nothing to pay per token
    int8 = load(base, dtype="int8", adapter=adapter)
    assert (int8.model(ids) - adapted(ids)).abs().max() < 0.05


def test_an_adapter_on_another_base_or_native_blocks_is_refused(base_and_adapter, tmp_path):
    base, adapter, adapted = base_and_adapter
    with pytest.raises(CentelhaError, match="native"):
        load(base, dtype="native", adapter=adapter)
    other = Transformer(tiny_config("llama", vocab_size=adapted.cfg.vocab_size, block_size=64))
    save_model_files(tmp_path / "other", other, load(base).tokenizer)
    with pytest.raises(CentelhaError) as error:
        load(tmp_path / "other", adapter=adapter)
    assert "\n" not in str(error.value)


def test_generate_takes_an_adapter(base_and_adapter):
    base, adapter, _ = base_and_adapter
    args = ["generate", str(base), "--prompt", "Era uma", "--temperature", "0",
            "--max-new-tokens", "8"]
    with_adapter = CliRunner().invoke(app, [*args, "--adapter", str(adapter)])
    assert with_adapter.exit_code == 0, with_adapter.output
    expected = load(base, adapter=adapter).generate("Era uma", temperature=0, max_new_tokens=8)
    assert with_adapter.output.rstrip("\n").endswith(expected.rstrip("\n"))
