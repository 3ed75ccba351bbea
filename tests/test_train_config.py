"""Training configs: every `train:` key is checked for its kind and range, the `model:`
section is checked when the config is read, and each bad value is a one-line error."""

import copy
import re
import sys

import pytest
import torch
import yaml

from centelha.errors import CentelhaError
from centelha.train import load_run_config
from centelha.train.config import parse_value
from centelha.train.loop import pick_device
from tests.conftest import TINY_RUN


def load(**overrides):
    return load_run_config(base=copy.deepcopy(TINY_RUN), overrides=overrides)


def refused(overrides) -> str:
    with pytest.raises(CentelhaError) as caught:
        load_run_config(base=copy.deepcopy(TINY_RUN), overrides=overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key, value, message", [
    ("eval_interval", 0, "train.eval_interval must be a positive integer"),
    ("eval_interval", -5, "train.eval_interval must be a positive integer"),
    ("min_lr", 1e-2, "train.min_lr must be a number from 0 to train.lr (0.003)"),
    ("min_lr", -1e-4, "train.min_lr must be a number from 0 to train.lr"),
    ("warmup_steps", -1, "train.warmup_steps must be a non-negative integer, not -1"),
    ("lr", True, "train.lr must be a positive number, not True"),
    ("lr", float("nan"), "train.lr must be a positive number, not nan"),
    ("lr", "fast", "train.lr must be a positive number, not 'fast'"),
    ("device", False, "train.device must be one of auto, cpu, cuda, mps (or cuda:N), not False"),
    ("device", "gpu", "train.device must be one of auto, cpu, cuda, mps"),
    ("device", "cuda:x", "train.device must be one of auto, cpu, cuda, mps"),
    ("compile", "yes", "train.compile must be true or false, not 'yes'"),
    ("compile", 1, "train.compile must be true or false, not 1"),
    ("decay_steps", 0, "train.decay_steps must be a positive integer or null"),
    ("weight_decay", -0.1, "train.weight_decay must be a number ≥ 0"),
    ("beta1", 1.0, "train.beta1 must be a number in [0, 1), not 1.0"),
    ("beta2", -0.5, "train.beta2 must be a number in [0, 1)"),
    ("grad_clip", -1, "train.grad_clip must be a number ≥ 0"),
    ("threads", 0, "train.threads must be a positive integer or null"),
    ("threads", True,
     "train.threads must be a positive integer or null (PyTorch's default), not True"),
    ("ckpt_interval", -1, "train.ckpt_interval must be a non-negative integer"),
    ("ckpt_interval", 2.5, "train.ckpt_interval must be a non-negative integer, not 2.5"),
    ("log_interval", 1.0, "train.log_interval must be a positive integer, not 1.0"),
    ("max_steps", None, "train.max_steps must be a positive integer, not None"),
    ("batch_size", True, "train.batch_size must be a positive integer, not True"),
    ("seed", -1, "train.seed must be an integer from 0"),
    ("seed", 2**64 - 1, "train.seed must be an integer from 0 to 2**64 - 2"),
])
def test_each_train_key_is_checked_for_kind_and_range(key, value, message):
    assert refused({f"train.{key}": value}).startswith(message)


@pytest.mark.parametrize("key, value", [
    ("lr", 1),               # an int where a float is expected
    ("min_lr", 3e-3),        # equal to lr: a flat schedule after warmup
    ("min_lr", 0),
    ("min_lr", None),        # lr / 10
    ("warmup_steps", 0),
    ("ckpt_interval", 0),    # only at the end
    ("decay_steps", None),
    ("threads", None),
    ("device", "cuda:1"),    # whether it exists is checked when the run starts
    ("device", "mps"),
    ("beta1", 0),
    ("grad_clip", 0),        # no clipping
    ("seed", 0),
    ("seed", 2**64 - 2),
])
def test_edge_values_that_make_sense_are_accepted(key, value):
    cfg = load(**{f"train.{key}": value}).train
    if value is not None:
        assert getattr(cfg, key) == value


def test_defaults_are_filled_in():
    cfg = load(**{"train.min_lr": None, "train.decay_steps": None}).train
    assert cfg.min_lr == pytest.approx(cfg.lr / 10)
    assert cfg.decay_steps == cfg.max_steps


@pytest.mark.parametrize("values, message", [
    ({"model": 5}, "config section 'model' must be a mapping of keys to values, not 5"),
    ({"train": [1, 2]}, "config section 'train' must be a mapping of keys to values"),
    ("not a mapping", "a config must be a mapping with 'model' and 'train' sections"),
])
def test_each_section_must_be_a_mapping(values, message):
    base = {**copy.deepcopy(TINY_RUN), **values} if isinstance(values, dict) else values
    with pytest.raises(CentelhaError) as caught:
        load_run_config(base=base)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("values", [
    {"n_kv_head": 0}, {"d_model": "wide"}, {"n_head": "4"}, {"n_layer": "2"},
    {"dropout": "a"}, {"rope_scaling": 5}, {"d_model": 30, "n_head": 4},
])
def test_the_model_section_is_checked_when_the_config_is_read(values):
    """`ModelConfig` words the message; here it must be one line, raised when the config
    is read (so before a run folder exists), naming the model section or the key."""
    base = copy.deepcopy(TINY_RUN)
    base["model"].update(values)
    with pytest.raises(CentelhaError) as caught:
        load_run_config(base=base)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("bad model config") or any(key in message for key in values)


def test_the_model_section_may_leave_vocab_size_to_the_tokenizer():
    cfg = load_run_config(base=copy.deepcopy(TINY_RUN))
    assert "vocab_size" not in cfg.model


@pytest.mark.parametrize("text, value", [
    ("3e-4", 3e-4), ("-1E5", -1e5), (".5e2", 50.0), ("3.0e-4", 3e-4), ("12", 12),
    ("true", True), ("no", False), ("e5", "e5"), ("1e", "1e"), ("cuda:0", "cuda:0"),
])
def test_flag_values_read_exponents_as_numbers(text, value):
    """`--set train.lr=3e-4` (the help's own example) is a number, not the string '3e-4'
    that YAML 1.1 makes of it."""
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_yaml_files_read_exponents_as_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {norm_eps: 1e-6}\ntrain: {lr: 6e-4, min_lr: 6e-5}\n")
    cfg = load_run_config(path)
    assert cfg.train.lr == 6e-4 and cfg.train.min_lr == 6e-5
    assert cfg.model["norm_eps"] == 1e-6


def test_a_missing_device_is_a_clear_error():
    with pytest.raises(CentelhaError, match=r"train.device is 'cuda:7' but"):
        pick_device("cuda:7")
    if not torch.backends.mps.is_available():
        with pytest.raises(CentelhaError, match="train.device is 'mps' but"):
            pick_device("mps")


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from centelha.cli import main

    monkeypatch.setattr(sys, "argv", ["centelha", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("setting, pattern", [
    ("train.device=no",
     r"train\.device must be one of auto, cpu, cuda, mps \(or cuda:N\), not False"),
    ("train.eval_interval=0", r"train\.eval_interval must be a positive integer"),
    ("model.n_kv_head=0", r"(bad model config|model\.n_kv_head)"),  # worded by ModelConfig
])
def test_the_cli_refuses_a_bad_value_in_one_line(monkeypatch, capsys, tmp_path, prepared,
                                                  setting, pattern):
    code, err = run_cli(monkeypatch, capsys, "train", "--config", "tiny", "--data", prepared,
                        "--out", tmp_path / "run", "--set", setting)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err
    assert len(lines) == 1 and re.match(f"error: {pattern}", lines[0]), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_cli_takes_the_helps_exponent_example(monkeypatch, capsys, tmp_path, prepared,
                                                  tiny_run_yaml):
    code, err = run_cli(monkeypatch, capsys, "train", "--config", tiny_run_yaml, "--data",
                        prepared, "--out", tmp_path / "run", "--set", "train.lr=3e-4",
                        "--set", "train.max_steps=2")
    assert code in (0, None), err  # typer's standalone mode ends with SystemExit(0)
    record = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert record["train"]["lr"] == pytest.approx(3e-4)
