"""Shared fixtures: tiny configs and a tiny prepared corpus cut from the bundled novels."""

from __future__ import annotations

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
