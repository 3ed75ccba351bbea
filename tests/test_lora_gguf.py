"""GGUF LoRA export: the file's metadata and tensor names/shapes, and, without llama.cpp,
that base GGUF + (alpha/r)·B·A from the adapter file, read back in llama.cpp's rotary
layout and un-permuted, equals our merged model's weights (which proves the Q/K
permutation of B). The llama.cpp peer check is `benchmarks/lora_llamacpp.py`."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from centelha.errors import CentelhaError
from centelha.formats.gguf import save_gguf
from centelha.formats.gguf.container import read_gguf
from centelha.formats.gguf.names import TABLES
from centelha.lora import apply_lora, lora_layers, merge, merged_model
from centelha.lora.gguf_export import export_gguf_lora
from centelha.model import Transformer
from centelha.tokenizer import train_bpe
from tests.conftest import tiny_config

CASES = {  # centelha config overrides, LoRA options, the architecture the files get
    "llama, grouped-query attention": (dict(), dict(), "llama"),
    "llama, rsLoRA, head too": (dict(), dict(rslora=True, targets=("qkv", "fc_in",
                                                                    "lm_head")), "llama"),
    "qwen2 (qkv biases)": (dict(qkv_bias=True), dict(), "qwen2"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 20],
                     vocab_size=300)


def adapted(tokenizer, overrides: dict, lora: dict) -> tuple[Transformer, Transformer]:
    """A tiny random llama base and a copy with rank-4 adapters whose B is nonzero."""
    torch.manual_seed(0)
    base = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size,
                                   **overrides)).eval()
    model = copy.deepcopy(base)
    apply_lora(model, r=4, alpha=8, **lora)
    for _, layer in lora_layers(model):  # B = 0 would make every check below trivial
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    return base, model


@pytest.mark.parametrize("case", CASES)
def test_metadata_names_and_shapes(tokenizer, tmp_path, case):
    overrides, lora, arch = CASES[case]
    _, model = adapted(tokenizer, overrides, lora)
    path = export_gguf_lora(model, tmp_path / "lora.gguf")
    gguf = read_gguf(path)
    meta, cfg, config = gguf.metadata, model.cfg, model.lora_config
    assert meta["general.type"] == "adapter"
    assert meta["general.architecture"] == arch
    assert meta["adapter.type"] == "lora"
    # llama.cpp scales by alpha / r: the alpha written must give our scale
    assert meta["adapter.lora.alpha"] / config.r == pytest.approx(config.scale, rel=1e-6)
    if config.rslora:
        assert meta["adapter.lora.alpha"] == pytest.approx(8 * math.sqrt(4), rel=1e-6)
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    out_rows = {"attn_q": q, "attn_k": kv, "attn_v": kv, "attn_output": cfg.d_model,
                "ffn_gate": cfg.d_ff, "ffn_up": cfg.d_ff, "ffn_down": cfg.d_model}
    in_cols = {"attn_output": q, "ffn_down": cfg.d_ff}
    expected = {}
    for name, _ in lora_layers(model):
        if name == "lm_head":
            expected["output.weight.lora_a"] = (4, cfg.d_model)
            expected["output.weight.lora_b"] = (cfg.vocab_size, 4)
            continue
        block = name.split(".")[1]
        for leaf, rows in out_rows.items():
            if _owner(leaf) == name.split(".", 2)[2]:
                expected[f"blk.{block}.{leaf}.weight.lora_a"] = (4, in_cols.get(leaf,
                                                                            cfg.d_model))
                expected[f"blk.{block}.{leaf}.weight.lora_b"] = (rows, 4)
    assert {n: t.shape for n, t in gguf.tensors.items()} == expected
    assert all(t.qtype.name == "F32" for t in gguf.tensors.values())
    gguf.close()


def _owner(leaf: str) -> str:
    """Our module (after `blocks.N.`) that a GGUF matrix of a block comes from."""
    return {"attn_q": "attn.qkv", "attn_k": "attn.qkv", "attn_v": "attn.qkv",
            "attn_output": "attn.proj", "ffn_gate": "mlp.fc_in", "ffn_up": "mlp.fc_in",
            "ffn_down": "mlp.fc_out"}[leaf]


@pytest.mark.parametrize("case", CASES)
def test_base_plus_update_is_the_merged_model(tokenizer, tmp_path, case):
    """W + (alpha/r)·B·A, all read from the two files in llama.cpp's layout, then turned
    back into our layout by the name table, equals merged_model's weights."""
    overrides, lora, arch = CASES[case]
    base, model = adapted(tokenizer, overrides, lora)
    save_gguf(base, tokenizer, tmp_path / "base.gguf", dtype="f32")
    export_gguf_lora(model, tmp_path / "lora.gguf")
    base_file, lora_file = read_gguf(tmp_path / "base.gguf"), read_gguf(tmp_path / "lora.gguf")
    scale = lora_file.metadata["adapter.lora.alpha"] / model.lora_config.r

    def weight(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        w = base_file.tensor(name)
        assert tuple(w.shape) == shape
        if f"{name}.lora_a" in lora_file.tensors:
            a, b = (lora_file.tensor(f"{name}.lora_{x}") for x in "ab")
            w = w + scale * b @ a
        return w

    # the name table's import direction un-permutes q/k rows and fuses q|k|v, gate|up
    ours = TABLES[arch].to_ours(model.cfg, weight)
    expected = merged_model(model).state_dict()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")
    base_file.close()
    lora_file.close()


def test_f16(tokenizer, tmp_path):
    _, model = adapted(tokenizer, {}, {})
    gguf = read_gguf(export_gguf_lora(model, tmp_path / "lora.gguf", dtype="f16"))
    assert {t.qtype.name for t in gguf.tensors.values()} == {"F16"}
    gguf.close()


def test_refusals(tokenizer, tmp_path):
    base, model = adapted(tokenizer, {}, {})
    with pytest.raises(CentelhaError, match="no LoRA adapters"):
        export_gguf_lora(base, tmp_path / "x.gguf")
    with pytest.raises(CentelhaError, match="dtype"):
        export_gguf_lora(model, tmp_path / "x.gguf", dtype="q8_0")
    merge(model)
    with pytest.raises(CentelhaError, match="merged"):
        export_gguf_lora(model, tmp_path / "x.gguf")
    gpt2 = Transformer(tiny_config("gpt2", vocab_size=tokenizer.vocab_size))
    apply_lora(gpt2, r=2, alpha=4)
    with pytest.raises(CentelhaError, match="llama-family"):
        export_gguf_lora(gpt2, tmp_path / "x.gguf")
    tied = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size,
                                   tie_embeddings=True))
    apply_lora(tied, r=2, alpha=4, targets=("qkv", "lm_head"))
    with pytest.raises(CentelhaError, match="tied"):
        export_gguf_lora(tied, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written
