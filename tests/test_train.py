"""The training loop: loss goes down, resume is exact, checkpoints load, configs are checked."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from centelha.checkpoint import load_checkpoint
from centelha.errors import CentelhaError
from centelha.train import load_run_config, train
from centelha.train.config import TrainConfig
from centelha.train.optim import learning_rate
from tests.conftest import TINY_RUN


def run_config(**train_overrides):
    values = copy.deepcopy(TINY_RUN)
    values["train"].update(train_overrides)
    return load_run_config(base=values)


def test_loss_goes_down(prepared, tmp_path):
    result = train(prepared, tmp_path / "run", run_config(max_steps=60, eval_interval=30),
                   show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert losses[-1] < losses[0] - 0.7
    assert vals[-1] < vals[0]
    assert result.step == 60
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_half_then_resume_equals_uninterrupted(prepared, tmp_path):
    train(prepared, tmp_path / "full", run_config(), show_progress=False)
    half = train(prepared, tmp_path / "half", run_config(), stop_after=6, show_progress=False)
    assert half.step == 6
    resumed = train(None, tmp_path / "half", resume=True, show_progress=False)
    assert resumed.step == 12
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "half" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "half" / "log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k != "tokens_per_s"} for r in log_a]
    assert strip == [{k: v for k, v in json.loads(r).items() if k != "tokens_per_s"}
                     for r in log_b]


def test_the_run_dir_is_a_checkpoint_that_loads(prepared, tmp_path):
    train(prepared, tmp_path / "run", run_config(max_steps=4), show_progress=False)
    model, tokenizer = load_checkpoint(tmp_path / "run")
    assert model.cfg.vocab_size == tokenizer.vocab_size
    assert sorted(p.name for p in (tmp_path / "run" / "state").iterdir()) == ["step_0000004"]


def test_threads_setting_does_not_leak(prepared, tmp_path):
    before = torch.get_num_threads()
    train(prepared, tmp_path / "run", run_config(max_steps=2, threads=1), show_progress=False)
    assert torch.get_num_threads() == before


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.55)
    assert learning_rate(110, cfg) == pytest.approx(0.1)
    lrs = [learning_rate(s, cfg) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_an_existing_run_is_not_overwritten(prepared, tmp_path):
    train(prepared, tmp_path / "run", run_config(max_steps=2), show_progress=False)
    with pytest.raises(CentelhaError, match="--resume"):
        train(prepared, tmp_path / "run", run_config(max_steps=2), show_progress=False)


@pytest.mark.parametrize("values, message", [
    ({"train": {"learning_rate": 1}}, "unknown config key 'train.learning_rate'"),
    ({"model": {"layers": 2}}, "unknown config key 'model.layers'"),
    ({"optim": {}}, "unknown config key 'config.optim'"),
    ({"train": {"batch_size": 0}}, "batch_size must be a positive integer"),
    ({"train": {"lr": -1}}, "lr must be a positive number"),
])
def test_bad_configs_are_refused(values, message):
    with pytest.raises(CentelhaError, match=message):
        load_run_config(base=values)


def test_yaml_and_overrides(tiny_run_yaml):
    cfg = load_run_config(tiny_run_yaml, {"train.lr": 0.5, "model.n_layer": 3})
    assert cfg.train.lr == 0.5 and cfg.model["n_layer"] == 3
    assert load_run_config("tiny").model["d_model"] == 128  # bundled by name
    with pytest.raises(CentelhaError, match="config file not found"):
        load_run_config("no-such-config.yaml")


def test_nothing_to_resume_is_a_clear_error(tmp_path):
    with pytest.raises(CentelhaError, match="nothing to resume"):
        train(None, tmp_path, resume=True, show_progress=False)


@pytest.mark.slow
def test_compiled_training_matches_eager(prepared, tmp_path):
    eager = train(prepared, tmp_path / "eager", run_config(max_steps=3), show_progress=False)
    compiled = train(prepared, tmp_path / "compiled", run_config(max_steps=3, compile=True),
                     show_progress=False)
    assert compiled.train_loss == pytest.approx(eager.train_loss, abs=1e-3)


def test_mfu_is_logged_where_the_peak_is_known(prepared, tmp_path, monkeypatch):
    """On a GPU whose peak is known MFU = training FLOPs per second / peak; here the CPU is
    given a made-up peak to check the arithmetic."""
    from centelha.train import loop

    monkeypatch.setattr(loop, "peak_flops", lambda device: 1e12)
    train(prepared, tmp_path / "run", run_config(max_steps=4, log_interval=2),
          show_progress=False)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    rows = [json.loads(line) for line in log.splitlines()]
    logged = [r for r in rows if "mfu" in r]
    assert len(logged) == 2
    # PaLM's accounting, counted here from the model itself, not from the library's
    # formula: 6 FLOPs per weight of every matrix product (forward 2, backward 4) and
    # 12 · layers · d_model · context for the attention scores and their weighted sum
    model = load_checkpoint(tmp_path / "run")[0]
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.cfg
    per_token = 6 * weights + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
    assert per_token == 6 * (2 * (3 * 32 * 32 + 32 * 32 + 2 * 32 * 128) + 32 * cfg.vocab_size) \
        + 12 * 2 * 32 * 32  # TINY_RUN: 2 layers of width 32, context 32
    for row in logged:
        assert row["mfu"] == pytest.approx(per_token * row["tokens_per_s"] / 1e12, rel=1e-3)
