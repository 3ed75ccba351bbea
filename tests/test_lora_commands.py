"""`centelha lora merge` and `centelha lora export`: an adapter folder and the base it
names, as one plain checkpoint or as PEFT / llama.cpp adapters."""

import json

import pytest
import torch
from typer.testing import CliRunner

from centelha import load
from centelha.cli import app
from centelha.errors import CentelhaError
from centelha.formats.gguf.container import read_gguf
from centelha.lora.runs import export_adapter, merge_adapter


@torch.no_grad()
def test_merge_writes_a_plain_checkpoint_with_the_adapted_logits(base_and_adapter, tmp_path):
    base, adapter, adapted = base_and_adapter
    result = CliRunner().invoke(app, ["lora", "merge", str(adapter), "--out",
                                      str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = load(tmp_path / "merged")
    ids = torch.randint(0, adapted.cfg.vocab_size, (2, 10))
    assert torch.allclose(merged.model(ids), adapted(ids), atol=1e-5)
    assert "adapter" not in merged.info  # nothing to merge any more: a model like any other


def test_export_to_peft_and_gguf_names_the_base(base_and_adapter, tmp_path):
    base, adapter, _ = base_and_adapter
    peft = export_adapter(adapter, "peft", tmp_path / "peft")
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and config["r"] == 4
    assert (peft / "adapter_model.safetensors").stat().st_size > 0
    gguf = read_gguf(export_adapter(adapter, "gguf", tmp_path / "lora.gguf"))
    try:
        names = set(gguf.tensors)
    finally:
        gguf.close()
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names


def test_bad_requests_are_one_line_errors(base_and_adapter, tmp_path):
    base, adapter, _ = base_and_adapter
    with pytest.raises(CentelhaError, match="--to must be one of peft, gguf"):
        export_adapter(adapter, "onnx", tmp_path / "x")
    with pytest.raises(CentelhaError, match="adapter.json"):
        merge_adapter(tmp_path / "no-adapter-here", tmp_path / "out")
    moved = tmp_path / "moved"
    with pytest.raises(CentelhaError):
        merge_adapter(adapter, tmp_path / "out", base=moved)  # a base that is not there
    assert not (tmp_path / "out").exists()


def test_eval_perplexity_takes_an_adapter(base_and_adapter, tmp_path):
    base, adapter, _ = base_and_adapter
    text = tmp_path / "t.txt"
    text.write_text("Era uma vez um rato que roía a roupa do rei de Roma. " * 4)

    def score(model, *extra):
        out = tmp_path / "ppl.json"
        result = CliRunner().invoke(app, ["eval", "perplexity", str(model), "--text", str(text),
                                          "--json", str(out), *extra])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())["overall"]["perplexity"]

    assert score(base) != score(base, "--adapter", str(adapter))
    assert score(base, "--adapter", str(adapter)) == score(adapter)
