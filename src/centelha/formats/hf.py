"""Hugging Face checkpoint folders: import (GPT-2, Llama 2/3, Mistral, Qwen2, Qwen3,
SmolLM2) and export (GPT-2 or Llama/Qwen layout) of `config.json` + safetensors.

Design choices a reader should know:
- A family is a `ModelConfig` preset: `hf_to_config` only translates field names, and
  `hf_to_tensors` only renames weights — GPT-2's `Conv1D` weights are stored transposed,
  and Q/K/V (and gate/up) are concatenated into centelha's fused projections.
- Only safetensors are read (sharded or not). `pytorch_model.bin` is a pickle and is
  refused with a message saying how to convert it.
- The tokenizer comes from `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`), the
  chat template and BOS/EOS from `tokenizer_config.json` (or `chat_template.jinja`), and
  extra end-of-turn ids from `generation_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from centelha.checkpoint import read_weights
from centelha.config import ModelConfig, normalised_rope_scaling
from centelha.errors import CentelhaError
from centelha.jsonfile import read_json_object
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer, read_stop_ids, read_tokenizer_config

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")


def is_hf_folder(path: Path) -> bool:
    """A Hugging Face folder's config.json names a `model_type`; centelha's names a `family`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in read_json_object(config)
    except CentelhaError:
        return False  # not a readable config: the checkpoint reader says why


# -- config ---------------------------------------------------------------------------------
def _rope(hf: dict) -> tuple[float, dict | None]:
    """rope_theta and scaling, from transformers 5's `rope_parameters` or the older keys."""
    params, scaling = hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise CentelhaError("config.json: rope_parameters and rope_scaling must be objects")
    scaling = dict(scaling or params)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise CentelhaError(f"config.json: rope_theta must be a number, not {theta!r}")
    return float(theta), normalised_rope_scaling(scaling)


def hf_to_config(hf: dict) -> ModelConfig:
    try:
        return _hf_to_config(hf)
    except KeyError as e:
        raise CentelhaError(f"config.json lacks {e.args[0]!r}") from None


def _hf_to_config(hf: dict) -> ModelConfig:
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise CentelhaError(f"unknown architecture {kind!r} (supported: {', '.join(SUPPORTED)})")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CentelhaError(f"GPT-2 activation {act!r} is not supported (gelu_new only)")
        if isinstance(hf["n_embd"], bool) or not isinstance(hf["n_embd"], int):
            raise CentelhaError(f"config.json: n_embd must be an integer, not {hf['n_embd']!r}")
        return ModelConfig.from_dict(dict(
            family="gpt2", vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024),
            n_layer=hf["n_layer"], n_head=hf["n_head"], d_model=hf["n_embd"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True), extra={"hf_model_type": kind},
        ))
    if hf.get("hidden_act", "silu") != "silu":
        raise CentelhaError(f"activation {hf.get('hidden_act')!r} is not supported (silu only)")
    theta, scaling = _rope(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    if attention_bias != bool(hf.get("mlp_bias", False)):
        raise CentelhaError("attention_bias without mlp_bias (or the reverse) is not supported")
    return ModelConfig.from_dict(dict(
        family="llama", vocab_size=hf["vocab_size"],
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        d_model=hf["hidden_size"], d_ff=hf["intermediate_size"], head_dim=hf.get("head_dim"),
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        bias=attention_bias, qkv_bias=attention_bias or kind == "qwen2",
        qk_norm=kind == "qwen3", tie_embeddings=hf.get("tie_word_embeddings", False),
        extra={"hf_model_type": kind},
    ))


# -- weights --------------------------------------------------------------------------------
def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's `model.safetensors`, or of the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json_object(index).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CentelhaError(f"{folder} holds only pickle weights (.bin/.pt), which centelha "
                            "does not load; save them as safetensors first "
                            "(model.save_pretrained(..., safe_serialization=True))")
    else:
        raise CentelhaError(f"{folder} has no model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(read_weights(folder / name))
    return {k: v.float() for k, v in tensors.items()}


def _take(tensors: dict[str, torch.Tensor], name: str, prefixes: tuple[str, ...]) -> torch.Tensor:
    for prefix in prefixes:
        if prefix + name in tensors:
            return tensors[prefix + name]
    raise CentelhaError(f"weight {name!r} is missing from the checkpoint")


def hf_to_tensors(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename (and fuse) a Hugging Face state dict into centelha's parameter names."""
    if cfg.extra.get("hf_model_type") == "gpt2":
        return _gpt2_to_tensors(hf, cfg)
    return _llama_to_tensors(hf, cfg)


def _gpt2_to_tensors(hf, cfg):
    def get(name):
        return _take(hf, name, ("transformer.", ""))

    out = {"tok_emb.weight": get("wte.weight"), "pos_emb.weight": get("wpe.weight"),
           "norm_f.weight": get("ln_f.weight"), "norm_f.bias": get("ln_f.bias")}
    for i in range(cfg.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[b + ours + ".weight"] = get(h + theirs + ".weight")
            out[b + ours + ".bias"] = get(h + theirs + ".bias")
        # Conv1D keeps weights as (in, out): transpose to Linear's (out, in).
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc_in", "mlp.c_fc"), ("mlp.fc_out", "mlp.c_proj")):
            out[b + ours + ".weight"] = get(h + theirs + ".weight").t().contiguous()
            out[b + ours + ".bias"] = get(h + theirs + ".bias")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _take(hf, "lm_head.weight", ("",))
    return out


def _llama_to_tensors(hf, cfg):
    def get(name):
        return _take(hf, name, ("model.", ""))

    out = {"tok_emb.weight": get("embed_tokens.weight"), "norm_f.weight": get("norm.weight")}
    for i in range(cfg.n_layer):
        h, b = f"layers.{i}.", f"blocks.{i}."
        attn = h + "self_attn."
        out[b + "norm1.weight"] = get(h + "input_layernorm.weight")
        out[b + "norm2.weight"] = get(h + "post_attention_layernorm.weight")
        out[b + "attn.qkv.weight"] = torch.cat(
            [get(attn + f"{x}_proj.weight") for x in "qkv"])
        if cfg.qkv_bias:
            out[b + "attn.qkv.bias"] = torch.cat([get(attn + f"{x}_proj.bias") for x in "qkv"])
        out[b + "attn.proj.weight"] = get(attn + "o_proj.weight")
        if cfg.qk_norm:
            out[b + "attn.q_norm.weight"] = get(attn + "q_norm.weight")
            out[b + "attn.k_norm.weight"] = get(attn + "k_norm.weight")
        mlp = h + "mlp."
        out[b + "mlp.fc_in.weight"] = torch.cat([get(mlp + "gate_proj.weight"),
                                                 get(mlp + "up_proj.weight")])
        out[b + "mlp.fc_out.weight"] = get(mlp + "down_proj.weight")
        if cfg.bias:
            out[b + "attn.proj.bias"] = get(attn + "o_proj.bias")
            out[b + "mlp.fc_in.bias"] = torch.cat([get(mlp + "gate_proj.bias"),
                                                   get(mlp + "up_proj.bias")])
            out[b + "mlp.fc_out.bias"] = get(mlp + "down_proj.bias")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = _take(hf, "lm_head.weight", ("",))
    return out


# -- tokenizer ------------------------------------------------------------------------------
def load_hf_tokenizer(folder: Path) -> Tokenizer:
    config = read_tokenizer_config(folder / "tokenizer_config.json")
    template = folder / "chat_template.jinja"
    if "chat_template" not in config and template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
    if isinstance(config.get("chat_template"), list):  # named templates: take the default
        named = {t.get("name"): t.get("template") for t in config["chat_template"]}
        config["chat_template"] = named.get("default") or next(iter(named.values()), None)
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
        tokenizer = Tokenizer(tokenizer.hf, config)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer = Tokenizer(gpt2_tokenizer(folder / "vocab.json", folder / "merges.txt"), config)
    else:
        raise CentelhaError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + "
                            "merges.txt)")
    tokenizer.stop_ids |= read_stop_ids(folder / "generation_config.json", tokenizer.vocab_size)
    return tokenizer


def gpt2_tokenizer(vocab: Path, merges: Path):
    """OpenAI's GPT-2 tokenizer from its vocab.json and merges.txt."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    return hf


def load_hf(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, centelha-named fp32 weights and tokenizer of a Hugging Face folder."""
    folder = Path(folder)
    cfg = hf_to_config(read_json_object(folder / "config.json"))
    try:
        tensors = hf_to_tensors(read_safetensors(folder), cfg)
    except RuntimeError as e:  # q/k/v (or gate/up) of shapes that cannot be concatenated
        raise CentelhaError(f"{folder}: the weights' shapes do not fit together "
                            f"({e})") from None
    tokenizer = load_hf_tokenizer(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CentelhaError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                            f"only {cfg.vocab_size}")
    return cfg, tensors, tokenizer


# -- export ---------------------------------------------------------------------------------
def config_to_hf(cfg: ModelConfig, tokenizer: Tokenizer) -> dict:
    special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id
               if tokenizer.eos_id is not None else tokenizer.eot_id}
    if cfg.family == "gpt2" or cfg.pos == "learned":
        if (cfg.norm, cfg.mlp, cfg.bias, cfg.qkv_bias, cfg.qk_norm) != \
                ("layernorm", "gelu", True, True, False) or cfg.n_kv_head != cfg.n_head:
            raise CentelhaError("this model mixes GPT-2 and Llama switches; Hugging Face has no "
                                "architecture for it (export needs a gpt2 or llama preset)")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size,
                "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": cfg.d_ff, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **special}
    if (cfg.norm, cfg.pos, cfg.mlp) != ("rmsnorm", "rope", "swiglu"):
        raise CentelhaError("this model mixes GPT-2 and Llama switches; Hugging Face has no "
                            "architecture for it (export needs a gpt2 or llama preset)")
    if cfg.qk_norm:
        kind, arch = "qwen3", "Qwen3ForCausalLM"
    elif cfg.qkv_bias and not cfg.bias:
        kind, arch = "qwen2", "Qwen2ForCausalLM"
    else:
        kind, arch = "llama", "LlamaForCausalLM"
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    return {"architectures": [arch], "model_type": kind, "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.block_size, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta, "rope_parameters": rope,
            "rope_scaling": cfg.rope_scaling, "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias, "tie_word_embeddings": cfg.tie_embeddings, **special}


def tensors_to_hf(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                  kind: str) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_tensors`."""
    out = {}
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    for name, t in tensors.items():
        if kind == "gpt2":
            out.update(_gpt2_name(name, t))
        else:
            out.update(_llama_name(name, t, q, kv, cfg.d_ff))
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return {k: v.contiguous() for k, v in out.items()}


GPT2_NAMES = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv": "attn.c_attn",
              "attn.proj": "attn.c_proj", "mlp.fc_in": "mlp.c_fc", "mlp.fc_out": "mlp.c_proj"}


def _gpt2_name(name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    top = {"tok_emb.weight": "transformer.wte.weight", "pos_emb.weight": "transformer.wpe.weight",
           "norm_f.weight": "transformer.ln_f.weight", "norm_f.bias": "transformer.ln_f.bias",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return {top[name]: t}
    _, layer, rest = name.split(".", 2)
    module, param = rest.rsplit(".", 1)
    if module.startswith(("attn", "mlp")) and param == "weight":
        t = t.t()
    return {f"transformer.h.{layer}.{GPT2_NAMES[module]}.{param}": t}


def _llama_name(name, t, q, kv, d_ff) -> dict[str, torch.Tensor]:
    top = {"tok_emb.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return {top[name]: t}
    _, layer, rest = name.split(".", 2)
    module, param = rest.rsplit(".", 1)
    h = f"model.layers.{layer}."
    if module == "attn.qkv":
        parts = t.split([q, kv, kv])
        return {f"{h}self_attn.{x}_proj.{param}": p for x, p in zip("qkv", parts, strict=True)}
    if module == "mlp.fc_in":
        gate, up = t.split([d_ff, d_ff])
        return {f"{h}mlp.gate_proj.{param}": gate, f"{h}mlp.up_proj.{param}": up}
    names = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm",
             "attn.proj": "self_attn.o_proj", "attn.q_norm": "self_attn.q_norm",
             "attn.k_norm": "self_attn.k_norm", "mlp.fc_out": "mlp.down_proj"}
    return {f"{h}{names[module]}.{param}": t}


def save_hf(model: Transformer, tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads."""
    from centelha.atomic import atomic_write, atomic_write_text
    from centelha.checkpoint import model_tensors

    out = Path(out)
    hf_config = config_to_hf(model.cfg, tokenizer)
    tensors = tensors_to_hf(model_tensors(model), model.cfg, hf_config["model_type"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    atomic_write(out / "model.safetensors",
                 lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "model_max_length": model.cfg.block_size, **tokenizer.config}
    if "eos_token" not in tok_config and tokenizer.eot_id is not None:
        tok_config["eos_token"] = tokenizer.id_to_token(tokenizer.eot_id)
    atomic_write_text(out / "tokenizer.json", tokenizer.to_str())
    atomic_write_text(out / "tokenizer_config.json",
                      json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    generation = tokenizer.generation_config()  # transformers' generate() stops at these
    atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    return out
