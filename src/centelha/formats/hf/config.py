"""A Hugging Face `config.json` ⇄ `ModelConfig`.

A family is a `ModelConfig` preset, so import only translates field names: GPT-2's
(`n_embd`, `n_layer`…) or the Llama-like ones shared by Llama, Mistral, Qwen2 and Qwen3
(q/k/v biases mean Qwen2, q/k norms Qwen3). Rope scaling is read by the config's own
`normalised_rope_scaling`, from transformers 5's `rope_parameters` or the older keys.

Sliding-window attention (Mistral; Qwen2/Qwen3 only with `use_sliding_window: true`):
every query sees at most `sliding_window` keys. Over a context of at most that many
tokens, that *is* full attention, so import caps `block_size` at the window and the model
runs exactly; longer inputs are refused like any input beyond the context. The window
goes to `cfg.extra["sliding_window"]` (and the context it replaced to
`extra["context_capped_from"]`). Export writes the capped context, which transformers
runs the same way.
"""

from __future__ import annotations

from centelha.config import ModelConfig, normalised_rope_scaling
from centelha.errors import CentelhaError
from centelha.kinds import is_integer
from centelha.tokenizer import Tokenizer

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
MIXED_SWITCHES = ("this model mixes GPT-2 and Llama switches; Hugging Face has no "
                  "architecture for it (export needs a gpt2 or llama preset)")


# -- import -----------------------------------------------------------------------------------
def hf_to_config(hf: dict) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face `config.json` (as a dict)."""
    try:
        return _hf_to_config(hf)
    except KeyError as e:
        raise CentelhaError(f"config.json lacks {e.args[0]!r}") from None


def _hf_to_config(hf: dict) -> ModelConfig:
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise CentelhaError(f"unknown architecture {kind!r} (supported: {', '.join(SUPPORTED)})")
    if kind == "gpt2":
        return _gpt2_config(hf)
    if hf.get("hidden_act", "silu") != "silu":
        raise CentelhaError(f"activation {hf.get('hidden_act')!r} is not supported (silu only)")
    theta, scaling = _rope(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    if attention_bias != bool(hf.get("mlp_bias", False)):
        raise CentelhaError("attention_bias without mlp_bias (or the reverse) is not supported")
    block_size, extra = _context(hf)
    return ModelConfig.from_dict(dict(
        family="llama", vocab_size=hf["vocab_size"], block_size=block_size,
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        d_model=hf["hidden_size"], d_ff=hf["intermediate_size"], head_dim=hf.get("head_dim"),
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
        bias=attention_bias, qkv_bias=attention_bias or kind == "qwen2",
        qk_norm=kind == "qwen3", tie_embeddings=hf.get("tie_word_embeddings", False),
        extra={"hf_model_type": kind, **extra},
    ))


def _gpt2_config(hf: dict) -> ModelConfig:
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
        tie_embeddings=hf.get("tie_word_embeddings", True), extra={"hf_model_type": "gpt2"},
    ))


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


def _context(hf: dict) -> tuple[int, dict]:
    """block_size, and the notes for `extra`: capped at the sliding window, if any."""
    block_size = hf.get("max_position_embeddings", 2048)
    window = _sliding_window(hf)
    if window is None:
        return block_size, {}
    if is_integer(block_size) and window < block_size:
        return window, {"sliding_window": window, "context_capped_from": block_size}
    return block_size, {"sliding_window": window}


def _sliding_window(hf: dict) -> int | None:
    """The attention window, when some layer uses one. Qwen2/Qwen3 configs carry a
    `sliding_window` they do not use (`use_sliding_window: false`); transformers 5 also
    names each layer's kind in `layer_types`."""
    window = hf.get("sliding_window")
    if window is None or hf.get("use_sliding_window") is False:
        return None
    layer_types = hf.get("layer_types")
    if isinstance(layer_types, list) and "sliding_attention" not in layer_types:
        return None
    if not is_integer(window) or window <= 0:
        raise CentelhaError(f"config.json: sliding_window must be a positive integer, "
                            f"not {window!r}")
    return int(window)


# -- export -----------------------------------------------------------------------------------
def config_to_hf(cfg: ModelConfig, tokenizer: Tokenizer) -> dict:
    """The `config.json` transformers needs for this model: GPT-2, or Llama / Qwen2 / Qwen3."""
    special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id
               if tokenizer.eos_id is not None else tokenizer.eot_id}
    if cfg.family == "gpt2" or cfg.pos == "learned":
        if (cfg.norm, cfg.mlp, cfg.bias, cfg.qkv_bias, cfg.qk_norm) != \
                ("layernorm", "gelu", True, True, False) or cfg.n_kv_head != cfg.n_head:
            raise CentelhaError(MIXED_SWITCHES)
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size,
                "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": cfg.d_ff, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **special}
    if (cfg.norm, cfg.pos, cfg.mlp) != ("rmsnorm", "rope", "swiglu"):
        raise CentelhaError(MIXED_SWITCHES)
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
