"""Every command runs on a tiny config; bad input is one line on stderr, not a traceback.

The commands run in this process through Typer's test runner, which is the same code
without a Python start-up per call. There a `CentelhaError` comes back as the result's
exception; `main()` (the entry point) is what prints it as one `error: ...` line with
exit status 1, and two tests run the real `python -m centelha` to check that part.
"""

import json
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from centelha import cli as cli_module
from centelha.cli import app
from centelha.errors import CentelhaError
from tests.conftest import PYTHON, cli_env


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # as cli_env(): rich wraps at 80 otherwise


def cli(*args):
    """`centelha ARGS`, in-process."""
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0 and result.exception is None, \
        f"{result.exception!r}\n{result.output}"
    return result.stdout


def assert_clear_error(result, message):
    """The command stopped with a CentelhaError naming `message`: what `main()` prints as
    one line, `error: ...`, exit status 1 (test_an_error_through_the_entry_point)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, CentelhaError), repr(result.exception)
    assert message in str(result.exception), str(result.exception)
    assert "\n" not in str(result.exception)


def run_entry_point(*args, timeout=180):
    return subprocess.run([PYTHON, "-m", "centelha", *map(str, args)], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)


# -- the entry point itself --------------------------------------------------------------
@pytest.mark.slow  # a Python start-up
def test_python_dash_m_and_help():
    result = run_entry_point("--help")
    assert result.returncode == 0
    for command in ("prepare", "train", "generate", "quickstart"):
        assert command in result.stdout


@pytest.mark.slow  # a Python start-up
def test_an_error_through_the_entry_point(tmp_path):
    result = run_entry_point("prepare", tmp_path / "nope", "--out", tmp_path / "o")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "corpus path not found" in lines[0], lines[0]


def test_main_turns_errors_and_ctrl_c_into_exit_statuses(monkeypatch, capsys):
    def failing(message):
        def command():
            raise message
        return command

    for raised, status, printed in [(CentelhaError("bad\ninput"), 1, "error: bad input"),
                                    (KeyboardInterrupt(), 130, "interrupted")]:
        monkeypatch.setattr(cli_module, "app", failing(raised))
        with pytest.raises(SystemExit) as exited:
            cli_module.main()
        assert exited.value.code == status
        assert capsys.readouterr().err.strip() == printed


# -- bad input without a model -------------------------------------------------------------
def test_missing_corpus(tmp_path):
    assert_clear_error(cli("prepare", tmp_path / "nope", "--out", tmp_path / "o"),
                       "corpus path not found")


def test_empty_corpus(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("\n\n")
    assert_clear_error(cli("prepare", tmp_path / "c", "--out", tmp_path / "o"), "corpus is empty")


def test_broken_gguf_is_one_line(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 24)
    assert_clear_error(cli("generate", tmp_path / "bad.gguf", "--prompt", "x"), "bad.gguf")


# -- a trained tiny model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    output = ok(cli("prepare", small_corpus, "--out", root / "data", "--vocab-size", 400))
    assert "train" in output and "unigram baseline" in output
    config = root / "tiny.yaml"
    config.write_text(
        "model: {family: llama, block_size: 32, n_layer: 2, n_head: 4, n_kv_head: 2, d_model: 32}\n"
        "train: {batch_size: 4, max_steps: 8, eval_interval: 4, eval_batches: 2, "
        "log_interval: 2, ckpt_interval: 4, warmup_steps: 2}\n")
    output = ok(cli("train", "--config", config, "--data", root / "data", "--out", root / "run",
                    "--stop-after", 4, "--lr", 0.003))
    assert "step 4" in output
    return root


@pytest.mark.slow
def test_train_resume_generate_info(trained):
    assert "step 8" in ok(cli("train", "--resume", trained / "run"))
    assert json.loads((trained / "run" / "config.json").read_text())["family"] == "llama"
    sampled = [ok(cli("generate", trained / "run", "--prompt", "Era uma vez", "--temperature",
                      0.8, "--top-p", 0.95, "--seed", 1, "--max-new-tokens", 12))
               for _ in range(2)]
    assert sampled[0].startswith("Era uma vez") and len(sampled[0]) > len("Era uma vez\n")
    assert sampled[0] == sampled[1]
    assert "parameters:" in ok(cli("info", trained / "run"))


@pytest.mark.slow
def test_unknown_config_key(trained, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {n_layers: 2}\n")
    assert_clear_error(cli("train", "--config", config, "--data", trained / "data",
                           "--out", tmp_path / "r"), "unknown config key 'model.n_layers'")


@pytest.mark.slow
def test_incomplete_checkpoint_dir(trained, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text((trained / "run" / "config.json").read_text())
    assert_clear_error(cli("generate", tmp_path / "ck", "--prompt", "x"),
                       "missing model.safetensors, tokenizer.json")


@pytest.mark.slow
def test_corrupt_weights(trained, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "ck", ignore=shutil.ignore_patterns("state"))
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    (tmp_path / "ck" / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_clear_error(cli("generate", tmp_path / "ck", "--prompt", "x"),
                       "not a readable safetensors file")


@pytest.mark.slow
def test_prompt_longer_than_the_context(trained):
    assert_clear_error(cli("generate", trained / "run", "--prompt", "palavra " * 100),
                       "this model's context holds 32")


@pytest.mark.slow
def test_bad_set_override(trained, tmp_path):
    assert_clear_error(cli("train", "--config", "tiny", "--data", trained / "data", "--out",
                           tmp_path / "r", "--set", "lr=1"), "must look like train.KEY")


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    output = ok(cli("quickstart", "--workdir", tmp_path, "--max-steps", 10))
    for text in ("1. prepare", "2. pretrain", "3. generate", "unigram baseline", "checkpoint:"):
        assert text in output
    assert (tmp_path / "runs" / "quickstart" / "model.safetensors").is_file()


@pytest.mark.slow
def test_convert_and_models_commands(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("CENTELHA_HOME", str(tmp_path / "home"))
    ok(cli("convert", trained / "run", "--to", "gguf", "--out", tmp_path / "m.gguf",
           "--dtype", "f32"))
    ok(cli("convert", trained / "run", "--to", "hf", "--out", tmp_path / "hf"))
    assert (tmp_path / "hf" / "config.json").is_file()
    ok(cli("models", "add", tmp_path / "m.gguf", "--name", "meu-gguf"))
    assert "meu-gguf" in ok(cli("models", "list"))
    shown = ok(cli("models", "show", "meu-gguf"))
    assert "family" in shown and "llama" in shown
    greedy = [ok(cli("generate", model, "--prompt", "Era", "--temperature", 0,
                     "--max-new-tokens", 8))
              for model in ("meu-gguf", tmp_path / "hf", trained / "run")]
    assert greedy[0] == greedy[1] == greedy[2]
    ok(cli("models", "rm", "meu-gguf"))
    assert_clear_error(cli("models", "show", "meu-gguf"), "no registered model")


@pytest.mark.slow
def test_convert_refuses_unknown_targets(trained, tmp_path):
    assert_clear_error(cli("convert", trained / "run", "--to", "onnx", "--out", tmp_path / "x"),
                       "--to must be hf or gguf")
