"""PEFT export: our LoRA adapters load in `peft` on the `transformers` model of the same
base, with no missing or unexpected keys, and give our logits before and after
`merge_and_unload`."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import torch

from centelha.errors import CentelhaError
from centelha.formats.hf import save_hf
from centelha.lora import apply_lora, lora_layers, merge
from centelha.lora.peft_export import export_peft
from centelha.model import Transformer
from centelha.tokenizer import train_bpe
from tests.conftest import tiny_config

LLAMA_TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
# centelha configs, the LoRA options, and the target_modules the export should write
CASES = {
    "llama, grouped-query attention": (dict(family="llama"), dict(), LLAMA_TARGETS),
    "qwen2 (qkv biases, tied)": (dict(family="llama", qkv_bias=True, tie_embeddings=True),
                                 dict(dropout=0.1), LLAMA_TARGETS),
    "qwen3 (q/k norms), rsLoRA": (dict(family="llama", qk_norm=True, head_dim=12),
                                  dict(rslora=True), LLAMA_TARGETS),
    "llama, some blocks and the head": (dict(family="llama"),
                                        dict(targets=("blocks.1.*", "lm_head")), None),
    "gpt2 (Conv1D, fused c_attn)": (dict(family="gpt2"), dict(), ["c_attn", "c_fc", "c_proj"]),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 20],
                     vocab_size=300)


def adapted_model(tokenizer, model_overrides: dict,
                  lora: dict) -> tuple[Transformer, Transformer]:
    """A tiny random base (random biases too), and a copy of it with rank-4 adapters
    whose B is nonzero."""
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tokenizer.vocab_size, block_size=64, **model_overrides)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    base = copy.deepcopy(model)
    apply_lora(model, r=4, alpha=8, **lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=generator))
    return base, model


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Python warnings and transformers/peft log records at WARNING or above, as text
    (transformers' logger does not propagate, so pytest's caplog would not see them)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("transformers", "peft")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.mark.slow  # importing peft alone takes ~4 s: the parity battery, not the fast lane
@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_the_export_with_our_logits_before_and_after_merging(tmp_path, tokenizer,
                                                                        case):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    model_overrides, lora, expected_targets = CASES[case]
    base_model, model = adapted_model(tokenizer, model_overrides, lora)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 20),
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids)
        assert (ours - base_model(ids)).abs().max().item() > 1e-2  # the adapter shows
    base = save_hf(base_model, tokenizer, tmp_path / "base")
    adapter = export_peft(model, tmp_path / "adapter", base_model_name_or_path=str(base))

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == \
        ("LORA", "CAUSAL_LM", 4, 8)
    assert config["use_rslora"] == lora.get("rslora", False)
    if expected_targets is None:  # not every block: a regex of the adapted modules' names
        assert config["target_modules"].startswith("^(?:model\\.layers\\.1\\.")
    else:
        assert config["target_modules"] == expected_targets

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    with captured_warnings() as messages:
        peft_model = peft.PeftModel.from_pretrained(hf_model, adapter).eval()
    # PEFT warns of missing or unexpected adapter keys, and of a Conv1D without fan_in_fan_out
    assert not [m for m in messages if "key" in m.lower() or "fan_in_fan_out" in m], messages
    with torch.no_grad():
        assert (peft_model(ids).logits - ours).abs().max().item() < 1e-4
        merged = peft_model.merge_and_unload().eval()
        assert (merged(ids).logits - ours).abs().max().item() < 1e-4


def test_the_fused_qkv_adapter_splits_exactly_into_q_k_v(tmp_path, tokenizer):
    from safetensors.torch import load_file

    _, model = adapted_model(tokenizer, dict(family="llama"), dict(targets=("qkv",)))
    export_peft(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    layer = model.get_submodule("blocks.0.attn.qkv")
    stem = "base_model.model.model.layers.0.self_attn."
    q, kv = model.cfg.n_head * model.cfg.head_dim, model.cfg.n_kv_head * model.cfg.head_dim
    for part, rows in (("q_proj", slice(0, q)), ("k_proj", slice(q, q + kv)),
                       ("v_proj", slice(q + kv, q + 2 * kv))):
        assert torch.equal(tensors[stem + part + ".lora_A.weight"], layer.lora_A.detach())
        assert torch.equal(tensors[stem + part + ".lora_B.weight"], layer.lora_B.detach()[rows])
    assert len(tensors) == 2 * 3 * model.cfg.n_layer


def test_no_adapters_a_merged_model_or_a_tied_lora_head_are_refused(tmp_path, tokenizer):
    torch.manual_seed(0)
    with pytest.raises(CentelhaError, match="no LoRA adapters"):
        export_peft(Transformer(tiny_config("llama")), tmp_path)
    _, model = adapted_model(tokenizer, dict(family="llama"), dict())
    merge(model)
    with pytest.raises(CentelhaError, match="merged"):
        export_peft(model, tmp_path)
    _, tied = adapted_model(tokenizer, dict(family="llama", tie_embeddings=True),
                         dict(targets=("lm_head",)))
    with pytest.raises(CentelhaError, match="tied"):
        export_peft(tied, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
