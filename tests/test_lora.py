"""Our LoRA: the adapter math, targets and freezing, merge/unmerge, adapters on disk, and
quantized bases. Tiny models throughout (two layers, d_model 32), so the file runs in
seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from centelha.errors import CentelhaError
from centelha.lora import (
    LoRAConfig,
    LoRALinear,
    adapters_disabled,
    apply_lora,
    base_fingerprint,
    load_adapter,
    lora_layers,
    lora_parameters,
    merge,
    merged_model,
    save_adapter,
    unmerge,
)
from centelha.model import Transformer
from centelha.quant import quantize_model
from tests.conftest import tiny_config


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(family, **overrides)).eval()


def tokens(seed: int = 1, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model: nn.Module, seed: int = 2) -> None:
    """Nonzero B (a fresh adapter's B is zero and changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=generator))


@torch.no_grad()
def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    return model(idx)


def train_steps(model: nn.Module, steps: int = 15, lr: float = 1e-2) -> list[float]:
    idx = tokens(seed=3, batch=4, length=16)
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# -- the layer ----------------------------------------------------------------------------
def test_fresh_adapter_gives_exactly_the_base_logits(family):
    model, idx = tiny_model(family), tokens()
    before = logits(model, idx)
    apply_lora(model, r=4, alpha=8)
    assert torch.equal(logits(model, idx), before)


def test_layer_computes_base_plus_scaled_low_rank_update():
    base = nn.Linear(32, 24)
    layer = LoRALinear(base, r=4, scale=2.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 32)
    expected = base(x) + 2.5 * (x @ layer.lora_A.t() @ layer.lora_B.t())
    torch.testing.assert_close(layer(x), expected)
    bound = 1 / math.sqrt(32)  # Kaiming-uniform as nn.Linear: A within ±1/sqrt(in)
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 4


@pytest.mark.parametrize("rslora, expected", [(False, 16 / 4), (True, 16 / 2)])
def test_scale_is_alpha_over_r_or_over_sqrt_r_with_rslora(rslora, expected):
    model = tiny_model()
    config = apply_lora(model, r=4, alpha=16, rslora=rslora)
    assert config.scale == expected
    assert all(layer.scale == expected for _, layer in lora_layers(model))


def test_bad_hyperparameters_are_refused():
    for bad in ({"r": 0}, {"r": True}, {"alpha": 0}, {"dropout": 1.0}, {"targets": ()}):
        with pytest.raises(CentelhaError):
            apply_lora(tiny_model(), **{"r": 4, "alpha": 8, **bad})


# -- targets and freezing -----------------------------------------------------------------
def test_default_targets_wrap_the_fused_projections_of_every_block():
    model = tiny_model()
    apply_lora(model, r=4, alpha=8)
    names = [name for name, _ in lora_layers(model)]
    assert names == [f"blocks.{i}.{m}" for i in range(2)
                     for m in ("attn.qkv", "attn.proj", "mlp.fc_in", "mlp.fc_out")]
    qkv = model.blocks[0].attn.qkv
    assert qkv.lora_B.shape == (32 + 2 * 16, 4)  # q rows then k, v (GQA: 2 kv heads of 8)


def test_patterns_are_dotted_suffixes_or_fnmatch_over_the_whole_name():
    model = tiny_model()
    apply_lora(model, r=2, alpha=2, targets=("blocks.1.*", "lm_head"))
    assert [n for n, _ in lora_layers(model)] == [
        "blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc_in", "blocks.1.mlp.fc_out",
        "lm_head"]
    with pytest.raises(CentelhaError, match="'qkvv' matches no linear layer"):
        apply_lora(tiny_model(), r=2, alpha=2, targets=("qkvv",))
    with pytest.raises(CentelhaError, match="already has LoRA"):
        apply_lora(model, r=2, alpha=2)


def test_only_adapters_train_and_a_few_steps_lower_the_loss():
    model = tiny_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=4, alpha=8, dropout=0.1)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_parameters(model)} and len(trainable) == 16
    losses = train_steps(model)
    assert losses[-1] < losses[0] - 0.1
    unchanged = bare_base_state(model)
    assert all(torch.equal(unchanged[k], v) for k, v in base.items())


def bare_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base's tensors under the bare names (a wrapped "x.base.weight" as "x.weight")."""
    from centelha.lora.fingerprint import base_tensors
    return base_tensors(model)


def test_adapters_disabled_computes_the_base_then_restores():
    model, idx = tiny_model(), tokens()
    before = logits(model, idx)
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)
    adapted = logits(model, idx)
    merge(model)
    with adapters_disabled(model):
        torch.testing.assert_close(logits(model, idx), before, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, idx), adapted, atol=1e-5, rtol=0)
    assert all(layer.merged and layer.enabled for _, layer in lora_layers(model))


# -- merging ------------------------------------------------------------------------------
def test_merge_adds_scaled_BA_gives_the_same_logits_and_unmerge_restores(family):
    model, idx = tiny_model(family), tokens()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    config = apply_lora(model, r=4, alpha=12, targets=("qkv", "proj", "fc_in", "fc_out"))
    randomize_adapters(model)
    unmerged = logits(model, idx)
    assert not torch.allclose(unmerged, logits_of(base, family, idx), atol=1e-4)
    assert merge(model) == 8
    for name, layer in lora_layers(model):
        expected = base[f"{name}.weight"] + config.scale * layer.lora_B @ layer.lora_A
        torch.testing.assert_close(layer.base.weight, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, idx), unmerged, atol=1e-5, rtol=0)
    assert unmerge(model) == 8
    for name, layer in lora_layers(model):
        torch.testing.assert_close(layer.base.weight, base[f"{name}.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model, idx), unmerged, atol=1e-6, rtol=0)


def logits_of(state: dict, family: str, idx: torch.Tensor) -> torch.Tensor:
    model = tiny_model(family)
    model.load_state_dict(state)
    return logits(model, idx)


def test_merged_model_is_a_plain_model_with_the_adapted_logits():
    model, idx = tiny_model(), tokens()
    plain_keys = set(model.state_dict())
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)
    adapted = logits(model, idx)
    merged = merged_model(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == plain_keys and not hasattr(merged, "lora_config")
    torch.testing.assert_close(logits(merged, idx), adapted, atol=1e-5, rtol=0)
    assert torch.equal(logits(model, idx), adapted)  # the adapted model is untouched
    merge(model)  # from a merged model too: the update is folded in once, not twice
    torch.testing.assert_close(logits(merged_model(model), idx), adapted, atol=1e-5, rtol=0)


def test_tied_head_refuses_in_place_merge_and_is_untied_in_the_merged_copy():
    model, idx = tiny_model("gpt2"), tokens()
    assert model.cfg.tie_embeddings
    embedding = model.tok_emb.weight.clone()
    apply_lora(model, r=2, alpha=4, targets=("lm_head",))
    randomize_adapters(model)
    with pytest.raises(CentelhaError, match="tied"):
        merge(model)
    merged = merged_model(model)
    assert not merged.cfg.tie_embeddings and merged.lm_head.weight is not merged.tok_emb.weight
    assert torch.equal(merged.tok_emb.weight, embedding)
    torch.testing.assert_close(logits(merged, idx), logits(model, idx), atol=1e-5, rtol=0)


# -- quantized bases ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_base_forward_training_and_merging(method):
    model, idx = quantize_model(tiny_model(), method), tokens()
    before = logits(model, idx)
    apply_lora(model, r=4, alpha=8)
    assert torch.equal(logits(model, idx), before)
    assert all(layer.lora_A.dtype == torch.float32 for _, layer in lora_layers(model))
    losses = train_steps(model)
    assert losses[-1] < losses[0] - 0.1
    with pytest.raises(CentelhaError, match="quantized layer .* in place"):
        merge(model)
    merged = merged_model(model)
    for name, layer in lora_layers(model):  # dequantized base + scale·B·A, in float32
        plain = merged.get_submodule(name)
        assert type(plain) is nn.Linear and plain.weight.dtype == torch.float32
        expected = layer.base.dequantize() + layer.scale * layer.lora_B @ layer.lora_A
        torch.testing.assert_close(plain.weight, expected, atol=1e-6, rtol=0)
    # the low-bit kernels round activations to 8 bits too: close to float, not equal
    torch.testing.assert_close(logits(merged, idx), logits(model, idx), atol=2e-2, rtol=0)


# -- adapters on disk ---------------------------------------------------------------------
def adapted_and_saved(tmp_path, family: str = "llama", **lora):
    model = tiny_model(family)
    apply_lora(model, **{"r": 4, "alpha": 8, **lora})
    randomize_adapters(model)
    save_adapter(model, tmp_path / "adapter", base_name="tiny-base")
    return model, tmp_path / "adapter"


def test_save_load_round_trip_gives_identical_logits(tmp_path, family):
    model, folder = adapted_and_saved(tmp_path, family, rslora=True, dropout=0.05)
    fresh, idx = tiny_model(family), tokens()
    config = load_adapter(fresh, folder)
    assert config == model.lora_config
    assert torch.equal(logits(fresh, idx), logits(model, idx))
    saved = json.loads((folder / "adapter.json").read_text())
    assert saved["base"] == "tiny-base" and saved["base_hash"].startswith("sha256:")
    assert (saved["r"], saved["alpha"], saved["rslora"]) == (4, 8, True)
    from safetensors.torch import load_file
    assert set(load_file(folder / "adapter.safetensors")) == {
        f"{n}.{p}" for n, _ in lora_layers(model) for p in ("lora_A", "lora_B")}


def test_saving_a_merged_model_records_the_bare_base(tmp_path):
    model, folder = adapted_and_saved(tmp_path)
    merge(model)
    save_adapter(model, tmp_path / "again", base_name="tiny-base")
    assert json.loads((tmp_path / "again" / "adapter.json").read_text())["base_hash"] == \
        json.loads((folder / "adapter.json").read_text())["base_hash"]
    load_adapter(tiny_model(), tmp_path / "again")


def test_a_different_base_is_refused_naming_both(tmp_path):
    _, folder = adapted_and_saved(tmp_path)
    other = tiny_model(seed=5)
    with pytest.raises(CentelhaError, match="trained on base 'tiny-base' .* different base") \
            as info:
        load_adapter(other, folder)
    assert str(info.value).count("sha256:") == 2
    assert not any(True for _ in lora_layers(other))  # refused before changing the model
    with pytest.raises(CentelhaError, match="needs floating point"):
        load_adapter(tiny_model(d_model=64), folder)


def test_fingerprint_ignores_wrapping_and_dtype_but_not_the_weights():
    model = tiny_model()
    digest = base_fingerprint(model)
    assert base_fingerprint(tiny_model().to(torch.bfloat16)) == digest
    apply_lora(model, r=2, alpha=2)
    assert base_fingerprint(model) == digest
    changed = tiny_model()
    with torch.no_grad():
        changed.blocks[0].mlp.fc_out.weight[0, 0] += 0.5  # the first value is sampled
    assert base_fingerprint(changed) != digest


def corrupt(folder, name: str, edit) -> None:
    path = folder / name
    if name.endswith(".json"):
        data = json.loads(path.read_text())
        result = edit(data)
        path.write_text(result if isinstance(result, str) else json.dumps(data))
    else:
        path.write_bytes(edit(path.read_bytes()))


BAD_FILES = {
    "no json": ("adapter.json", None, "file not found"),
    "no tensors": ("adapter.safetensors", None, "file not found"),
    "not json": ("adapter.json", lambda d: "{oops", "not valid JSON"),
    "not ours": ("adapter.json", lambda d: d.update(format="peft"), "not a centelha LoRA"),
    "no rank": ("adapter.json", lambda d: d.pop("r"), "lacks r"),
    "bad rank": ("adapter.json", lambda d: d.update(r="4"), "rank r must be"),
    "bad targets": ("adapter.json", lambda d: d.update(targets="qkv"), "targets must be"),
    "bad hash": ("adapter.json", lambda d: d.update(base_hash=3), "'base_hash' must be"),
    "truncated": ("adapter.safetensors", lambda b: b[:len(b) // 2], "not a valid safetensors"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_adapter_files_get_one_line_errors(tmp_path, case):
    _, folder = adapted_and_saved(tmp_path)
    name, edit, message = BAD_FILES[case]
    if edit is None:
        (folder / name).unlink()
    else:
        corrupt(folder, name, edit)
    with pytest.raises(CentelhaError, match=message) as info:
        load_adapter(tiny_model(), folder)
    assert "\n" not in str(info.value)


def test_tensors_that_do_not_match_the_description_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    _, folder = adapted_and_saved(tmp_path)
    tensors = load_file(folder / "adapter.safetensors")
    tensors.pop("blocks.0.attn.qkv.lora_B")
    save_file(tensors, folder / "adapter.safetensors")
    with pytest.raises(CentelhaError, match="missing .*blocks.0.attn.qkv.lora_B"):
        load_adapter(tiny_model(), folder)


def test_saving_without_adapters_is_refused(tmp_path):
    with pytest.raises(CentelhaError, match="no LoRA adapters"):
        save_adapter(tiny_model(), tmp_path / "a", base_name="x")


def test_config_round_trips_through_its_dict():
    config = LoRAConfig(r=8, alpha=16.0, dropout=0.1, targets=("qkv",), rslora=True)
    assert LoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
