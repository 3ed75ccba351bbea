"""Mutated model files never crash the readers: a property-based battery (hypothesis).

Small valid files are built once per module: GGUF files by centelha's export (llama f32,
gpt2 q8_0), centelha checkpoints (fp32, int8) and Hugging Face folders (`save_hf`, llama
and gpt2), whose `config.json`, `model.safetensors` and `tokenizer.json` are the other
targets. Each example mutates one file and loads it through the real entry points
(`loading.load_model`, `registry.model_card`, `Tokenizer.load`). The property: it loads, or
it raises a `CentelhaError` whose message is one line. Any other exception (a
traceback) fails the example, and hypothesis shrinks it to a minimal mutation.

Mutations: bytes flipped, overwritten with boundary values (0, 2^31, 2^64 - 1, …) at
any offset or exactly on a number of the GGUF header (counts, lengths, type ids,
dimensions), inserted, deleted, truncated; for JSON (config.json, tokenizer.json, the
safetensors header) a value anywhere in the tree replaced by a wrong type, a huge
number or a deeply nested list, or removed; and safetensors headers edited so that the
library still accepts them (a tensor reshaped, retyped, renamed), to reach the code
behind it. Mutations favour headers: a changed weight is still a valid file.

`EXAMPLES` fixes the examples per kind (1150 in all, about 10 s on two cores);
generation is derandomized and there is no example database, so every run, in CI too,
tries the same files. For a deeper search, raise the counts and set derandomize=False
locally. The last tests replay, one example each, what the battery found.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import struct
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from centelha import registry
from centelha.checkpoint import save_model_files
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.formats.gguf import container as gguf_format
from centelha.formats.gguf import save_gguf
from centelha.formats.hf import save_hf
from centelha.loading import load_model
from centelha.model import Transformer
from centelha.quant import quantize_model
from centelha.tokenizer import Tokenizer, train_bpe

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

EXAMPLES = {"gguf": 400, "safetensors": 300, "config.json": 250, "tokenizer.json": 200}


def fuzz_settings(kind: str) -> settings:
    return settings(max_examples=EXAMPLES[kind], deadline=None, derandomize=True,
                    database=None)


# -- the valid files ------------------------------------------------------------------------
def tiny_model(tokenizer: Tokenizer, family: str) -> Transformer:
    values = dict(family=family, vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1,
                  n_head=2, d_model=32)
    if family == "llama":
        values.update(n_kv_head=1, d_ff=32)
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_dict(values))


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("originals")
    tokenizer = train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 10],
                          vocab_size=270)
    save_gguf(tiny_model(tokenizer, "llama"), tokenizer, root / "llama.gguf", dtype="f32")
    save_gguf(tiny_model(tokenizer, "gpt2"), tokenizer, root / "gpt2.gguf", dtype="q8_0")
    save_model_files(root / "fp32", tiny_model(tokenizer, "gpt2"), tokenizer)
    save_model_files(root / "int8", quantize_model(tiny_model(tokenizer, "llama"), "int8"),
                     tokenizer)
    save_hf(tiny_model(tokenizer, "llama"), tokenizer, root / "hf")
    save_hf(tiny_model(tokenizer, "gpt2"), tokenizer, root / "hf-gpt2")
    return {"llama.gguf": root / "llama.gguf", "gpt2.gguf": root / "gpt2.gguf",
            "fp32": root / "fp32", "int8": root / "int8", "hf": root / "hf",
            "hf-gpt2": root / "hf-gpt2"}


FOLDERS = ["fp32", "int8", "hf", "hf-gpt2"]


@functools.cache
def gguf_numbers(path: Path) -> tuple[tuple[tuple[int, str], ...], ...]:
    """The numbers the reader takes from a GGUF header, as (offset, struct format), grouped
    by what they belong to: the version, the counts, one metadata entry (type, value or
    item type, count, item lengths), one tensor entry (dimensions, type, offset)."""
    found: dict[str, list[tuple[int, str]]] = {}

    class Recording(gguf_format._Cursor):
        def scalar(self, fmt, what):
            found.setdefault(what, []).append((self.pos, fmt))
            return super().scalar(fmt, what)

    with mock.patch.object(gguf_format, "_Cursor", Recording):
        gguf_format.read_gguf(path).close()
    return tuple(tuple(group) for group in found.values())


def safetensors_header_end(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


# -- mutations ------------------------------------------------------------------------------
BOUNDARY_INTS = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 255, 2**31 - 1, 2**31, 2**32 - 1,
                 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
BOUNDARY_FLOATS = [0.0, -1.0, 1e-45, 1e30, float("inf"), float("-inf"), float("nan")]


@st.composite
def byte_edit(draw, size: int, header_end: int):
    """One edit of a file of `size` bytes; offsets fall in the header half of the time."""
    at = draw(st.one_of(st.integers(0, max(header_end - 1, 0)), st.integers(0, size - 1)))
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
    if kind == "flip":
        return kind, at, draw(st.integers(1, 255))
    if kind == "overwrite":
        width = draw(st.sampled_from([1, 4, 8]))
        value = draw(st.sampled_from(BOUNDARY_INTS)) % (1 << (8 * width))
        return kind, at, value.to_bytes(width, "little")
    if kind == "insert":
        return kind, at, draw(st.binary(min_size=1, max_size=16))
    if kind == "delete":
        return kind, at, draw(st.integers(1, 64))
    return kind, at, None


def apply_edit(data: bytearray, edit) -> bytearray:
    kind, at, arg = edit
    at = min(at, max(len(data) - 1, 0))
    if kind == "flip" and data:
        data[at] ^= arg
    elif kind == "overwrite":
        data[at:at + len(arg)] = arg
    elif kind == "insert":
        data[at:at] = arg
    elif kind == "delete":
        del data[at:at + arg]
    elif kind == "truncate":
        del data[at:]
    return data


@st.composite
def number_edit(draw, groups):
    """A boundary value written exactly over one number of a GGUF header: a group is
    chosen first, then mostly one of its first numbers (a type, a count, a dimension),
    so the thousands of string lengths in the vocabulary do not drown the rest."""
    group = draw(st.sampled_from(groups))
    first = draw(st.integers(0, min(len(group), 4) - 1))
    at, fmt = group[draw(st.one_of(st.just(first), st.integers(0, len(group) - 1)))]
    if fmt in ("<f", "<d"):
        return "overwrite", at, struct.pack(fmt, draw(st.sampled_from(BOUNDARY_FLOATS)))
    width = struct.calcsize(fmt)
    value = draw(st.sampled_from(BOUNDARY_INTS)) % (1 << (8 * width))
    return "overwrite", at, value.to_bytes(width, "little")


DEEP = "<lists nested 5000 deep>"  # written into the JSON text by `json_bytes`
JSON_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30),
                     0.5, -0.0, 1e308, float("nan"), float("inf"), "", "x", "llama", "gpt2",
                     "int4", "Q8_0", "I32", "F16", "U8", [], {}, [1], ["x"], {"x": 1},
                     [[[[[1]]]]], DEEP]),
    st.text(max_size=8),
    st.integers(),
)


@st.composite
def json_edit(draw, tree):
    """A path into `tree` and what to do there: replace the value, or remove it."""
    path, node = [], tree
    while isinstance(node, (dict, list)) and node and (not path or draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                   else range(len(node))))
        path.append(key)
        node = node[key]
    action = draw(st.sampled_from(["replace", "replace", "remove"])) if path else "replace"
    return path, action, draw(JSON_VALUES) if action == "replace" else None


def apply_json_edit(tree, edit):
    path, action, value = edit
    value = copy.deepcopy(value)  # the strategy hands out the same list objects again
    if not path:
        return value
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if action == "remove":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return tree


def json_edits(data, tree, most: int = 3):
    """`tree` after 1 to `most` edits, each drawn against the tree the last one left."""
    for _ in range(data.draw(st.integers(1, most))):
        tree = apply_json_edit(tree, data.draw(json_edit(tree)))
    return tree


# safetensors dtypes of one item size: retyping keeps the header consistent with the data
SAME_SIZE_DTYPES = {"F32": ["I32", "U32"], "F16": ["BF16", "I16"], "I8": ["U8", "BOOL"],
                    "U8": ["I8", "BOOL"], "I64": ["F64"]}


@st.composite
def consistent_header_edit(draw, header: dict):
    """A header edit that keeps every tensor's bytes as they are, so that the loaders
    behind the safetensors library are reached: a tensor reshaped (same number of values),
    retyped (same item size) or renamed; or dropped (which the library refuses)."""
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = header[name]
    action = draw(st.sampled_from(["reshape", "reshape", "retype", "rename", "drop"]))
    if action == "reshape":
        size = math.prod(entry["shape"])
        shapes = [[size], [1, size], entry["shape"][::-1], [*entry["shape"], 1]]
        return name, "shape", draw(st.sampled_from(shapes + ([[]] if size == 1 else [])))
    if action == "retype" and entry["dtype"] in SAME_SIZE_DTYPES:
        return name, "dtype", draw(st.sampled_from(SAME_SIZE_DTYPES[entry["dtype"]]))
    if action == "rename":
        return name, "name", draw(st.sampled_from(sorted(header)))
    return name, "drop", None


def apply_header_edit(header: dict, edit) -> dict:
    name, what, value = edit
    if what in ("shape", "dtype"):
        header[name] = {**header[name], what: value}
    elif what == "name":  # this entry now stands under another name (maybe replacing it)
        header[value] = header.pop(name)
    elif len(header) > 1:
        del header[name]  # its bytes stay, unclaimed: the library refuses that
    return header


def json_bytes(tree) -> bytes:
    return json.dumps(tree).replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000).encode()


# -- the property ---------------------------------------------------------------------------
def loads_or_fails_in_one_line(call, *args) -> None:
    try:
        call(*args)
    except CentelhaError as e:
        message = str(e)
        assert len(message.splitlines()) == 1, f"not a one-line message: {message!r}"
        event(f"{call.__name__}: CentelhaError")  # see pytest --hypothesis-show-statistics
    else:
        event(f"{call.__name__}: loaded")


def model_entry_points(path: Path) -> None:
    loads_or_fails_in_one_line(load_model, path)
    loads_or_fails_in_one_line(registry.model_card, path)


def copy_folder(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


# -- the battery ----------------------------------------------------------------------------
# garbage block scales dequantize to inf or NaN: numpy warns, and the file still loads
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@given(data=st.data())
@fuzz_settings("gguf")
def test_mutated_gguf_files(originals, data):
    name = data.draw(st.sampled_from(["llama.gguf", "gpt2.gguf"]))
    original = originals[name].read_bytes()
    numbers = gguf_numbers(originals[name])
    header_end = max(at for group in numbers for at, _ in group) + 8
    edits = data.draw(st.lists(st.one_of(byte_edit(len(original), header_end),
                                         number_edit(numbers)), min_size=1, max_size=3))
    mutated = bytearray(original)
    for edit in edits:
        mutated = apply_edit(mutated, edit)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(bytes(mutated))
        model_entry_points(path)


@given(data=st.data())
@fuzz_settings("safetensors")
def test_mutated_safetensors_files(originals, data):
    folder = originals[data.draw(st.sampled_from(FOLDERS))]
    original = (folder / "model.safetensors").read_bytes()
    header_end = safetensors_header_end(folder / "model.safetensors")
    how = data.draw(st.sampled_from(["consistent", "consistent", "json", "bytes"]))
    if how == "consistent":
        header = json.loads(original[8:header_end])
        for _ in range(data.draw(st.integers(1, 2))):
            header = apply_header_edit(header, data.draw(consistent_header_edit(header)))
        text = json.dumps(header).encode()
        mutated = bytearray(struct.pack("<Q", len(text)) + text + original[header_end:])
    elif how == "json":  # the header as JSON: any value anywhere
        text = json_bytes(json_edits(data, json.loads(original[8:header_end]), most=2))
        mutated = bytearray(struct.pack("<Q", len(text)) + text + original[header_end:])
    else:
        mutated = bytearray(original)
        for edit in data.draw(st.lists(byte_edit(len(original), header_end), min_size=1,
                                       max_size=3)):
            mutated = apply_edit(mutated, edit)
    with tempfile.TemporaryDirectory() as tmp:
        target = copy_folder(folder, Path(tmp) / folder.name)
        (target / "model.safetensors").write_bytes(bytes(mutated))
        model_entry_points(target)


def mutated_json(data, original: bytes) -> bytes:
    """Most often structural edits of the parsed JSON, sometimes raw byte edits."""
    if data.draw(st.integers(0, 3)):
        return json_bytes(json_edits(data, json.loads(original)))
    raw = bytearray(original)
    for edit in data.draw(st.lists(byte_edit(len(raw), len(raw)), min_size=1, max_size=3)):
        raw = apply_edit(raw, edit)
    return bytes(raw)


@given(data=st.data())
@fuzz_settings("config.json")
def test_mutated_config_json(originals, data):
    folder = originals[data.draw(st.sampled_from(FOLDERS))]
    mutated = mutated_json(data, (folder / "config.json").read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        target = copy_folder(folder, Path(tmp) / folder.name)
        (target / "config.json").write_bytes(mutated)
        model_entry_points(target)


@given(data=st.data())
@fuzz_settings("tokenizer.json")
def test_mutated_tokenizer_json(originals, data):
    folder = originals["fp32"]
    mutated = mutated_json(data, (folder / "tokenizer.json").read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        target = copy_folder(folder, Path(tmp) / folder.name)
        (target / "tokenizer.json").write_bytes(mutated)
        loads_or_fails_in_one_line(Tokenizer.load, target / "tokenizer.json")
        loads_or_fails_in_one_line(load_model, target)


# -- what the battery found, one example each -------------------------------------------------
def json_set(*keys, value):
    """An edit of a JSON file: the value under `keys` (none: the whole document)."""
    def edit(original: bytes) -> bytes:
        tree = json.loads(original)
        if not keys:
            return json.dumps(value).encode()
        node = tree
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return json.dumps(tree).encode()
    return edit


def with_header(original: bytes, edit) -> bytes:
    """A safetensors file whose JSON header went through `edit`, with the same data."""
    end = 8 + struct.unpack("<Q", original[:8])[0]
    text = json.dumps(edit(json.loads(original[8:end]))).encode()
    return struct.pack("<Q", len(text)) + text + original[end:]


def retype_first_tensor(original: bytes) -> bytes:
    """The first float32 tensor declared int32 (same bytes)."""
    def edit(header):
        name = next(k for k, v in sorted(header.items()) if k != "__metadata__"
                    and v["dtype"] == "F32")
        header[name]["dtype"] = "I32"
        return header
    return with_header(original, edit)


def as_one_row(name: str):
    """Tensor `name` declared a single row of all its values (same bytes)."""
    def edit(header):
        header[name]["shape"] = [1, math.prod(header[name]["shape"])]
        return header
    return lambda original: with_header(original, edit)


# (folder, file, edit, message): each raised another exception, hung, or printed several
# lines before the fix.
FOUND = {
    "n_kv_head 0 (ZeroDivisionError)": (
        "fp32", "config.json", json_set("n_kv_head", value=0),
        "model.n_kv_head must be a positive integer below 2\\^32 or null, not 0"),
    "extra a list (AttributeError)": (
        "fp32", "config.json", json_set("extra", value=[]),
        "model.extra must be a JSON object, not \\[\\]"),
    "config.json not UTF-8 (UnicodeDecodeError)": (
        "fp32", "config.json", lambda b: b"\xff" + b, "config.json is not valid JSON"),
    "config.json nested 5000 deep (RecursionError)": (
        "hf", "config.json", lambda b: b"[" * 5000 + b"]" * 5000,
        "config.json is not valid JSON: nested too deeply"),
    "config.json holding null (TypeError)": (
        "hf", "config.json", json_set(value=None), "config.json must hold a JSON object"),
    "rope_scaling a list (ValueError)": (
        "hf", "config.json", json_set("rope_scaling", value=[1]),
        "rope_parameters and rope_scaling must be objects"),
    "rope_theta a string (ValueError)": (
        "hf", "config.json", json_set("rope_parameters", "rope_theta", value="x"),
        "rope_theta must be a number, not 'x'"),
    "gpt2 n_embd null (TypeError)": (
        "hf-gpt2", "config.json", json_set("n_embd", value=None),
        "n_embd must be an integer, not None"),
    "negative init_std (RuntimeError when initialising)": (
        "int8", "config.json", json_set("init_std", value=-1.0),
        "model.init_std must not be negative"),
    "a layer name with a newline (several lines)": (
        "int8", "config.json", json_set("extra", "quantization", "layers", 0, value="x\ny"),
        "the model has no layer x y to quantize"),
    "an int32 weight (RuntimeError: only floats require gradients)": (
        "fp32", "model.safetensors", retype_first_tensor, "holds torch.int32 values, not floats"),
    "q_proj reshaped in a Hugging Face folder (RuntimeError from torch.cat)": (
        "hf", "model.safetensors", as_one_row("model.layers.0.self_attn.q_proj.weight"),
        "the weights' shapes do not fit together"),
    "a float norm reshaped in an int8 checkpoint (RuntimeError from load_state_dict)": (
        "int8", "model.safetensors", as_one_row("norm_f.weight"),
        r"weight norm_f.weight has shape \(1, 32\), the config implies \(32,\)"),
    "an untied gpt2 head missing (KeyError)": (
        "hf-gpt2", "config.json", json_set("tie_word_embeddings", value=False),
        "weight 'lm_head.weight' is missing from the checkpoint"),
    "a safetensors error quoting a newline (several lines)": (
        "fp32", "model.safetensors",
        lambda b: with_header(b, lambda h: {**h, "lm_head.weight": {**h["tok_emb.weight"],
                                                                     "dtype": "\r"}}),
        "is not a readable safetensors file .*unknown variant ` `"),
    "a tokenizer.json that makes the Rust library panic (PanicException)": (
        "fp32", "tokenizer.json", json_set("model", "continuing_subword_prefix", value="Ġ"),
        "is not a valid tokenizer.json: slice index starts at 2"),
    "a tokenizer.json error quoting a newline (several lines)": (
        "fp32", "tokenizer.json", json_set("version", value="\r"),
        "Unknown tokenizer version ' ' at line 1"),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_what_the_battery_found_is_a_clear_error(originals, tmp_path, case):
    folder, file, edit, message = FOUND[case]
    target = copy_folder(originals[folder], tmp_path / folder)
    (target / file).write_bytes(edit((target / file).read_bytes()))
    with pytest.raises(CentelhaError, match=message) as error:
        load_model(target)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("folder, key, value", [("int8", "vocab_size", 2**30),
                                                ("fp32", "n_layer", 10**6)])
def test_a_config_far_bigger_than_its_weights_is_refused_before_building_it(
        originals, tmp_path, monkeypatch, folder, key, value):
    """Building it took the memory (int8: the float layers first) or, for a million
    layers, the minutes of the model the config describes."""
    target = copy_folder(originals[folder], tmp_path / folder)
    (target / "config.json").write_bytes(json_set(key, value=value)(
        (target / "config.json").read_bytes()))

    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(Transformer, "__init__", built)
    with pytest.raises(CentelhaError, match="config.json describes .* weights, the file "
                                            "holds only"):
        load_model(target)
