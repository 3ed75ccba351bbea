"""The GGUF reader: every supported block type dequantizes like ggml, and truncated,
corrupt or hostile files fail with one clear line before any large allocation."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from centelha.errors import CentelhaError
from centelha.formats.gguf import load_gguf, save_gguf
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer
from tests.gguf_helpers import chat_tokenizer, make_model, rewrite


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return chat_tokenizer()


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
    from centelha.formats.gguf.container import MAX_ARRAY_DEPTH, read_gguf

    allowed = read_gguf(nested_arrays_file(tmp_path / "ok.gguf", MAX_ARRAY_DEPTH))
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
    from centelha.formats.gguf import read_gguf_shapes
    from centelha.formats.gguf.container import GGUFFile

    save_gguf(make_model(tokenizer.vocab_size, family), tokenizer, tmp_path / "m.gguf", "q8_0")
    cfg, tensors, _ = load_gguf(tmp_path / "m.gguf")

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    for name in ("tensor", "raw_rows"):
        monkeypatch.setattr(GGUFFile, name, no_data)
    shape_cfg, shapes = read_gguf_shapes(tmp_path / "m.gguf")
    assert shape_cfg == cfg
    assert shapes == {name: tuple(t.shape) for name, t in tensors.items()}


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_a_head_stored_twice_is_tied_whatever_the_chunk(tmp_path, tokenizer, chunk,
                                                        monkeypatch):
    from centelha.formats.gguf import container

    monkeypatch.setattr(container, "COMPARE_CHUNK", chunk)
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
