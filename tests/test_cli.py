"""Every command runs on a tiny config; bad input is one line on stderr, not a traceback."""

import json
import subprocess

import pytest

from tests.conftest import PYTHON, cli_env

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out


def cli(*args, timeout=180):
    return subprocess.run([PYTHON, "-m", "centelha", *map(str, args)], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)


def assert_clear_error(result, message):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and message in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    result = cli("prepare", small_corpus, "--out", root / "data", "--vocab-size", 400)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "unigram baseline" in result.stdout
    config = root / "tiny.yaml"
    config.write_text(
        "model: {family: llama, block_size: 32, n_layer: 2, n_head: 4, n_kv_head: 2, d_model: 32}\n"
        "train: {batch_size: 4, max_steps: 8, eval_interval: 4, eval_batches: 2, "
        "log_interval: 2, ckpt_interval: 4, warmup_steps: 2}\n")
    result = cli("train", "--config", config, "--data", root / "data", "--out", root / "run",
                 "--stop-after", 4, "--lr", 0.003)
    assert result.returncode == 0, result.stderr
    assert "step 4" in result.stdout
    return root


def test_train_resume_generate_info(trained):
    result = cli("train", "--resume", trained / "run")
    assert result.returncode == 0, result.stderr
    assert "step 8" in result.stdout
    assert json.loads((trained / "run" / "config.json").read_text())["family"] == "llama"
    a = cli("generate", trained / "run", "--prompt", "Era uma vez", "--temperature", 0.8,
            "--top-p", 0.95, "--seed", 1, "--max-new-tokens", 12)
    b = cli("generate", trained / "run", "--prompt", "Era uma vez", "--temperature", 0.8,
            "--top-p", 0.95, "--seed", 1, "--max-new-tokens", 12)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("Era uma vez") and len(a.stdout) > len("Era uma vez\n")
    assert a.stdout == b.stdout
    info = cli("info", trained / "run")
    assert info.returncode == 0 and "parameters:" in info.stdout


def test_python_dash_m_and_help():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("prepare", "train", "generate", "quickstart"):
        assert command in result.stdout


def test_missing_corpus(tmp_path):
    assert_clear_error(cli("prepare", tmp_path / "nope", "--out", tmp_path / "o"),
                       "corpus path not found")


def test_empty_corpus(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("\n\n")
    assert_clear_error(cli("prepare", tmp_path / "c", "--out", tmp_path / "o"), "corpus is empty")


def test_unknown_config_key(trained, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {n_layers: 2}\n")
    assert_clear_error(cli("train", "--config", config, "--data", trained / "data",
                           "--out", tmp_path / "r"), "unknown config key 'model.n_layers'")


def test_incomplete_checkpoint_dir(trained, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text((trained / "run" / "config.json").read_text())
    assert_clear_error(cli("generate", tmp_path / "ck", "--prompt", "x"),
                       "missing model.safetensors, tokenizer.json")


def test_corrupt_weights(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "ck", ignore=shutil.ignore_patterns("state"))
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (tmp_path / "ck" / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_clear_error(cli("generate", tmp_path / "ck", "--prompt", "x"),
                       "not a readable safetensors file")


def test_prompt_longer_than_the_context(trained):
    assert_clear_error(cli("generate", trained / "run", "--prompt", "palavra " * 100),
                       "this model's context holds 32")


def test_bad_set_override(trained, tmp_path):
    assert_clear_error(cli("train", "--config", "tiny", "--data", trained / "data", "--out",
                           tmp_path / "r", "--set", "lr=1"), "must look like train.KEY")


def test_quickstart_runs_end_to_end(tmp_path):
    result = cli("quickstart", "--workdir", tmp_path, "--max-steps", 10, timeout=300)
    assert result.returncode == 0, result.stderr
    for text in ("1. prepare", "2. pretrain", "3. generate", "unigram baseline", "checkpoint:"):
        assert text in result.stdout
    assert (tmp_path / "runs" / "quickstart" / "model.safetensors").is_file()


def test_convert_and_models_commands(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("CENTELHA_HOME", str(tmp_path / "home"))
    result = cli("convert", trained / "run", "--to", "gguf", "--out", tmp_path / "m.gguf",
                 "--dtype", "f32")
    assert result.returncode == 0, result.stderr
    result = cli("convert", trained / "run", "--to", "hf", "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf" / "config.json").is_file()
    result = cli("models", "add", tmp_path / "m.gguf", "--name", "meu-gguf")
    assert result.returncode == 0, result.stderr
    listing = cli("models", "list")
    assert listing.returncode == 0 and "meu-gguf" in listing.stdout
    shown = cli("models", "show", "meu-gguf")
    assert "family" in shown.stdout and "llama" in shown.stdout
    a = cli("generate", "meu-gguf", "--prompt", "Era", "--temperature", 0, "--max-new-tokens", 8)
    b = cli("generate", tmp_path / "hf", "--prompt", "Era", "--temperature", 0,
            "--max-new-tokens", 8)
    c = cli("generate", trained / "run", "--prompt", "Era", "--temperature", 0,
            "--max-new-tokens", 8)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout == c.stdout
    assert cli("models", "rm", "meu-gguf").returncode == 0
    assert_clear_error(cli("models", "show", "meu-gguf"), "no registered model")


def test_convert_refuses_unknown_targets(trained, tmp_path):
    assert_clear_error(cli("convert", trained / "run", "--to", "onnx", "--out", tmp_path / "x"),
                       "--to must be hf or gguf")


def test_broken_gguf_is_one_line(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 24)
    result = cli("generate", tmp_path / "bad.gguf", "--prompt", "x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:")
