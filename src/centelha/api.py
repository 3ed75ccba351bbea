"""`centelha.load`: one call from a name, folder or GGUF file to a model you can talk to.

`load` accepts a registry name (`smollm2-135m-instruct`), a centelha checkpoint folder,
a Hugging Face folder or a `.gguf` file, and returns an `LLM` with `generate`, `stream`
and `chat`. The CLI's `generate` and `chat` go through it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from centelha.checkpoint import load_checkpoint
from centelha.engine import Engine, Request
from centelha.errors import CentelhaError
from centelha.generate import prompt_ids, stream_text, with_bos
from centelha.model import Transformer
from centelha.registry import resolve
from centelha.sampling import SamplingConfig
from centelha.template import encode_chat, render_chat
from centelha.tokenizer import Tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZED = ("int8", "int4")
# "native": keep a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K blocks as they are (no fp32 copy)
WEIGHT_FORMATS = (*DTYPES, *QUANTIZED, "native")
# The KV cache is preallocated, so a model that declares 128k positions would reserve
# gigabytes for one conversation: by default it gets this many (pass max_context to change).
DEFAULT_CONTEXT = 4096


def load_model(source: str | Path, dtype: str = "fp32",
               group_size: int = 32) -> tuple[Transformer, Tokenizer, dict]:
    """(model in eval mode, tokenizer, info about where it came from).

    `dtype` chooses the weight format: fp32 (the default on CPU), bf16, fp16, int8
    (per output channel), int4 (groups of `group_size`), or native (a GGUF file's own
    blocks, loaded into quantized layers without an fp32 detour).
    """
    if dtype not in WEIGHT_FORMATS:
        raise CentelhaError(f"dtype must be one of {', '.join(WEIGHT_FORMATS)}, not {dtype!r}")
    path = resolve(source)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CentelhaError(f"{path}: a model is a .gguf file or a folder "
                                "(centelha checkpoint or Hugging Face)")
        from centelha.formats.gguf import load_gguf

        cfg, tensors, tokenizer = load_gguf(path, keep_quantized=dtype == "native")
        model = with_blocks(cfg, tensors)
        info = {"format": "gguf", "quantization": cfg.extra.get("gguf_file_type", "unknown")}
    else:
        from centelha.formats.hf import is_hf_folder, load_hf

        if is_hf_folder(path):
            cfg, tensors, tokenizer = load_hf(path)
            model = Transformer.from_tensors(cfg, tensors)
            info = {"format": "hf"}
        else:
            model, tokenizer = load_checkpoint(path)
            info = {"format": "centelha"}
    info["path"] = str(path)
    if dtype in QUANTIZED and not is_quantized(model):
        from centelha.quant import quantize_model

        quantize_model(model, dtype, group_size)
    elif dtype in DTYPES:
        cast_floats(model, DTYPES[dtype])
    quantization = (model.cfg.extra.get("quantization") or {}).get("method")
    if is_quantized(model):
        info["quantization"] = quantization or dtype
    return model.eval(), tokenizer, info


def cast_floats(model: Transformer, dtype: torch.dtype) -> None:
    """Cast the float weights to `dtype`, leaving quantized layers' blocks and scales alone."""
    from centelha.quant import QuantLinear

    for module in model.modules():
        if isinstance(module, QuantLinear):
            continue
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor.data = tensor.data.to(dtype)


def is_quantized(model: Transformer) -> bool:
    from centelha.quant import QuantLinear

    return any(isinstance(m, QuantLinear) for m in model.modules())


def with_blocks(cfg, tensors: dict) -> Transformer:
    """A model whose matrices given as GGUF blocks become quantized layers; the rest float."""
    from centelha.formats.gguf import QuantizedRows
    from centelha.quant import QuantLinear

    blocks = {k: v for k, v in tensors.items() if isinstance(v, QuantizedRows)}
    dense = {k: torch.empty(v.shape, device="meta") if k in blocks else v
             for k, v in tensors.items()}
    model = Transformer.from_tensors(cfg, dense)
    for name, value in blocks.items():
        module = name.removesuffix(".weight")
        layer = QuantLinear.from_gguf_blocks(value.rows.numpy(), value.ggml_type, value.shape,
                                             bias=tensors.get(module + ".bias"))
        parent, _, attr = module.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer)
    return model


def sampling_from(kwargs: dict) -> SamplingConfig:
    try:
        return SamplingConfig(**kwargs)
    except TypeError as e:
        raise CentelhaError(f"unknown generation setting: {e}") from None


class LLM:
    """A loaded model and its tokenizer, with the three ways people use one."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str = "model",
                 info: dict | None = None, max_context: int = DEFAULT_CONTEXT):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.info = info or {}
        self.max_context = min(max_context, model.cfg.block_size)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # the cache is allocated on first use
            self._engine = Engine(self.model, max_batch=1, max_len=self.max_context,
                                  vocab_size=self.tokenizer.vocab_size)
        return self._engine

    def stream(self, prompt: str | list[dict], **settings) -> Iterator[str]:
        """Text pieces as they are generated; a list of messages is a chat."""
        cfg = sampling_from(settings)
        if isinstance(prompt, list):
            ids = self.chat_ids(prompt)
        else:
            ids = prompt_ids(self.tokenizer, prompt)
        request = Request(ids, cfg, frozenset(self.tokenizer.stop_ids))
        tokens = (t.token for t in self.engine.stream(request))
        return stream_text(self.tokenizer, tokens, cfg.stop)

    def generate(self, prompt: str, **settings) -> str:
        """The continuation of `prompt` (temperature=0 for greedy)."""
        return "".join(self.stream(prompt, **settings))

    def chat(self, messages: list[dict], **settings) -> str:
        """The assistant's reply to `messages` ([{"role": "user", "content": ...}, ...])."""
        return "".join(self.stream(messages, **settings)).strip()

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text the chat template makes of `messages`."""
        tok = self.tokenizer
        return render_chat(tok.chat_template, messages, tok.bos_token, tok.eos_token)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The prompt ids of `messages`; their contents never become special tokens."""
        return with_bos(self.tokenizer, encode_chat(self.tokenizer, messages))


def load(source: str | Path = "smollm2-135m-instruct", dtype: str = "fp32",
         max_context: int = DEFAULT_CONTEXT) -> LLM:
    """A model by registry name, checkpoint folder, Hugging Face folder or GGUF path;
    `dtype`: fp32, bf16, fp16, int8, int4 or native (see `load_model`)."""
    model, tokenizer, info = load_model(source, dtype)
    return LLM(model, tokenizer, name=str(source), info=info, max_context=max_context)
