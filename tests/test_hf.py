"""Hugging Face folders: parity with `transformers` for every family, export, round trips."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from centelha import load
from centelha.checkpoint import save_model_files
from centelha.engine import generate_ids
from centelha.errors import CentelhaError
from centelha.formats.hf import hf_to_config, save_hf
from centelha.model import Transformer
from centelha.sampling import SamplingConfig
from centelha.tokenizer import train_bpe
from tests.conftest import tiny_config

GPT2_TOKENIZER = Path(__file__).parent / "data" / "gpt2-tokenizer"
LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                   max_position_embeddings=128)
FAMILIES = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=64,
                                            n_layer=2, n_head=4),
    "llama": lambda: transformers.LlamaConfig(**LLAMA_SHAPE, rope_theta=500000.0),
    "llama3-rope-scaling": lambda: transformers.LlamaConfig(
        **LLAMA_SHAPE, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16}),
    "smollm2 (llama, tied)": lambda: transformers.LlamaConfig(**LLAMA_SHAPE,
                                                              tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(**LLAMA_SHAPE),
    "qwen2": lambda: transformers.Qwen2Config(**LLAMA_SHAPE, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**LLAMA_SHAPE, head_dim=24),
}


def randomize_biases_and_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Biases are zeros and norms ones at init: random ones make a mix-up of q/k/v biases
    (or of q/k norms) show in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def small_tokenizer():
    return train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 30],
                     vocab_size=300)


def make_hf_folder(tmp_path, family, config=None, **save_kwargs):
    """A random transformers model of `family` (or of `config`) saved in a folder."""
    torch.manual_seed(0)
    config = config or FAMILIES[family]()
    model = randomize_biases_and_norms(
        transformers.AutoModelForCausalLM.from_config(config).eval())
    folder = tmp_path / family.split()[0]
    model.save_pretrained(folder, **save_kwargs)
    if family == "gpt2":
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(GPT2_TOKENIZER / name, folder / name)
    else:
        small_tokenizer().save(folder)
    return model, folder


def hf_greedy(model, ids, steps):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-steps:]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_greedy_match_transformers(tmp_path, family):
    hf_model, folder = make_hf_folder(tmp_path, family)
    llm = load(folder)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(ids).logits
        ours = llm.model(ids)
    assert (ours - expected).abs().max().item() < 1e-4
    prompt = ids[0, :5].tolist()
    greedy = list(generate_ids(llm.model, prompt, SamplingConfig(max_new_tokens=20,
                                                                 temperature=0)))
    assert greedy == hf_greedy(hf_model, prompt, 20)


def test_sharded_checkpoint_loads(tmp_path):
    hf_model, folder = make_hf_folder(tmp_path, "llama", max_shard_size="60KB")
    assert (folder / "model.safetensors.index.json").is_file()
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.allclose(load(folder).model(ids), hf_model(ids).logits, atol=1e-4)


def test_real_gpt2_tokenizer_from_vocab_and_merges(tmp_path):
    _, folder = make_hf_folder(tmp_path, "gpt2")
    tokenizer = load(folder).tokenizer
    # "Hello world" is [15496, 995] in OpenAI's GPT-2 vocabulary
    assert tokenizer.encode("Hello world") == [15496, 995]
    text = "Olá, coração! 🙂"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eot_id == 50256


def test_chat_template_and_eos_come_from_tokenizer_config(tmp_path):
    _, folder = make_hf_folder(tmp_path, "qwen2")
    config = {"chat_template": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                               "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
              "eos_token": "<|endoftext|>", "bos_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    llm = load(folder)
    assert llm.chat_prompt([{"role": "user", "content": "oi"}]) == "<user>oi<assistant>"
    assert llm.tokenizer.eos_id == llm.tokenizer.eot_id


# centelha configs and the Hugging Face architecture each exports as
EXPORTS = {
    "gpt2": (dict(family="gpt2"), "gpt2"),
    "llama": (dict(family="llama"), "llama"),
    "qwen2 (qkv biases only, tied)": (dict(family="llama", qkv_bias=True, tie_embeddings=True),
                                      "qwen2"),
    "qwen3 (q/k norms, wide heads)": (dict(family="llama", qk_norm=True, head_dim=12), "qwen3"),
}


@pytest.mark.parametrize("variant", list(EXPORTS))
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, variant):
    overrides, model_type = EXPORTS[variant]
    tokenizer = small_tokenizer()
    cfg = tiny_config(vocab_size=tokenizer.vocab_size, block_size=64, **overrides)
    torch.manual_seed(0)
    model = randomize_biases_and_norms(Transformer(cfg).eval())
    out = save_hf(model, tokenizer, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, tokenizer.vocab_size, (2, 30))
    with torch.no_grad():
        ours = model(ids)
        assert (hf_model(ids).logits - ours).abs().max().item() < 1e-4
        # and back: centelha → HF → centelha is exact
        assert torch.equal(load(out).model(ids), ours)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.encode("Era uma vez") == tokenizer.encode("Era uma vez")


# -- sliding-window attention ---------------------------------------------------------------
def test_a_sliding_window_caps_the_context_and_stays_exact(tmp_path):
    hf_model, folder = make_hf_folder(
        tmp_path, "mistral", transformers.MistralConfig(**LLAMA_SHAPE, sliding_window=16))
    llm = load(folder)
    cfg = llm.model.cfg
    assert cfg.block_size == 16
    assert cfg.extra == {"hf_model_type": "mistral", "sliding_window": 16,
                         "context_capped_from": 128}
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a window's worth of tokens: full attention is the window
        assert (llm.model(ids) - hf_model(ids).logits).abs().max().item() < 1e-4
        with pytest.raises(CentelhaError):  # beyond it, refused like any overlong input
            llm.model(torch.zeros(1, 17, dtype=torch.long))


QWEN2 = dict(model_type="qwen2", vocab_size=300, hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)


@pytest.mark.parametrize("keys, block_size, window", [
    (dict(sliding_window=32), 32, 32),  # Mistral-style: no switch, the window applies
    (dict(sliding_window=4096), 128, 4096),  # wider than the context: nothing to cap
    (dict(sliding_window=32, use_sliding_window=False), 128, None),  # Qwen2's unused window
    (dict(sliding_window=32, use_sliding_window=True,
          layer_types=["full_attention", "full_attention"]), 128, None),
    (dict(sliding_window=32, use_sliding_window=True,
          layer_types=["full_attention", "sliding_attention"]), 32, 32),
    (dict(sliding_window=None), 128, None),
])
def test_sliding_window_keys(keys, block_size, window):
    cfg = hf_to_config({**QWEN2, **keys})
    assert cfg.block_size == block_size
    assert cfg.extra.get("sliding_window") == window


def test_a_bad_sliding_window_is_refused():
    with pytest.raises(CentelhaError, match="sliding_window must be a positive integer"):
        hf_to_config({**QWEN2, "sliding_window": "wide"})


def test_centelha_checkpoint_loads_through_the_same_api(tmp_path):
    tokenizer = small_tokenizer()
    model = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size)).eval()
    save_model_files(tmp_path / "ck", model, tokenizer)
    llm = load(tmp_path / "ck")
    assert llm.info["format"] == "centelha"
    assert isinstance(llm.generate("Era", max_new_tokens=5, temperature=0), str)


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "config.json").write_text('{"model_type": "bert"}'),
     "unknown architecture 'bert' (supported: gpt2, llama, mistral, qwen2, qwen3)"),
    (lambda f: (f / "config.json").write_text('{"model_type": "llama"}'), "config.json lacks"),
    (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer"),
    (lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:5000]), "not a readable safetensors file"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}"),
     "not a readable safetensors file"),
    (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "pickle"),
])
def test_broken_folders_get_clear_errors(tmp_path, breakage, message):
    _, folder = make_hf_folder(tmp_path, "llama")
    breakage(folder)
    with pytest.raises(CentelhaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(folder)
