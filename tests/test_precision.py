"""train.precision: auto picks bf16 where the hardware pays for it, and says why."""

import json

import pytest
import torch

from centelha import precision
from centelha.errors import CentelhaError
from centelha.precision import resolve_precision
from centelha.train import train
from tests.test_train import run_config


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "fp32"),                          # no native bf16 arithmetic
    ({"avx512f", "avx512_vnni"}, "fp32"),               # AVX-512 without its BF16 extension
    ({"avx512f", "avx512_bf16"}, "bf16"),               # AMD EPYC Zen 4: bf16 dot products
    ({"avx512f", "amx_tile", "amx_bf16"}, "bf16"),      # Xeon 4th generation
])
def test_auto_takes_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    chosen, why = resolve_precision("auto", torch.device("cpu"))
    assert chosen == expected and why.startswith("auto: ")
    assert resolve_precision("fp32", torch.device("cpu"))[0] == "fp32"
    assert resolve_precision("bf16", torch.device("cpu"))[0] == "bf16"
    assert resolve_precision("auto", torch.device("cuda"))[0] == "bf16"


def test_a_bad_precision_is_refused():
    with pytest.raises(CentelhaError, match="train.precision must be one of auto, fp32, bf16"):
        run_config(precision="fp16")


def test_bf16_training_runs_in_bf16_and_learns(prepared, tmp_path, monkeypatch):
    seen = []
    real = torch.nn.functional.linear

    def recording(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", recording)
    train(prepared, tmp_path / "run", run_config(max_steps=40, eval_interval=40,
                                                 precision="bf16"), show_progress=False)
    assert torch.bfloat16 in seen  # autocast really ran the products in bf16
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().split("\n")
            if line]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5
