"""`centelha train` under torchrun on the CPU (gloo, 2 processes): DDP and FSDP follow a
single process with the same global batch step for step, a run saved by 2 ranks resumes on
1 (and the other way round, across strategies), and a killed worker stops the run quickly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON

from centelha.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

STEPS = 20
CONFIG = {
    "model": {"family": "gpt2", "block_size": 32, "n_layer": 2, "n_head": 2, "d_model": 32,
              "dropout": 0.0},
    "train": {"batch_size": 4, "max_steps": STEPS, "lr": 3e-3, "warmup_steps": 2,
              "eval_interval": 10, "eval_batches": 2, "log_interval": 1, "ckpt_interval": 10,
              "threads": 1, "device": "cpu",
              # fp32: where `auto` takes bf16, a batch split over ranks rounds differently
              "precision": "fp32"},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CENTELHA_DIST_TIMEOUT": "60"}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def centelha(*args: str, ranks: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = [PYTHON, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={ranks}"] if ranks > 1 else [PYTHON]
    result = subprocess.run([*launcher, "-m", "centelha", *args], env=ENV, timeout=timeout,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def single(config, prepared, tmp_path_factory) -> Path:
    """One process with the global batch of 2 ranks × 4 sequences."""
    out = tmp_path_factory.mktemp("single") / "run"
    centelha("train", "--config", str(config), "--data", str(prepared), "--out", str(out),
             "--batch-size", "8")
    return out


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_ranks(request, config, prepared, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "run"
    result = centelha("train", "--config", str(config), "--data", str(prepared), "--out",
                      str(out), "--strategy", request.param, ranks=2)
    assert "global batch 8 sequences = 4 × 1 accumulation × 2 rank(s)" in \
        " ".join(result.stdout.split())
    return request.param, out


def test_two_ranks_follow_one_process_with_the_same_global_batch(single, two_ranks):
    strategy, run = two_ranks
    expected, got = losses(single), losses(run)
    assert len(got) == len(expected) == STEPS
    assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < 1e-4, strategy
    assert expected[-1] < expected[0] - 0.5  # it learned something
    # the single-file model is there for inference, and equals the one process's
    model, _ = load_checkpoint(run)
    reference, _ = load_checkpoint(single)
    for name, tensor in reference.state_dict().items():
        assert (model.state_dict()[name] - tensor).abs().max() < 1e-4, name


@pytest.mark.parametrize("saved,resumed", [("fsdp", "single"), ("ddp", "fsdp")])
def test_resume_across_world_sizes_and_strategies(config, prepared, tmp_path, single, saved,
                                                  resumed):
    run = tmp_path / "run"
    centelha("train", "--config", str(config), "--data", str(prepared), "--out", str(run),
             "--strategy", saved, "--stop-after", "10", ranks=2)
    assert len(losses(run)) == 10
    if saved == "fsdp":
        assert (run / "state" / "step_0000010" / "sharded").is_dir()
    if resumed == "single":
        centelha("train", "--resume", str(run))
    else:
        centelha("train", "--resume", str(run), "--strategy", resumed, ranks=2)
    got, expected = losses(run), losses(single)
    assert len(got) == STEPS
    assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < 1e-4


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_killed_worker_stops_the_run_with_a_message(config, prepared, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
         "centelha", "train", "--config", str(config), "--data", str(prepared), "--out",
         str(run), "--max-steps", "1000000"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "log.jsonl").exists() and len(losses(run)) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, "never trained"
            time.sleep(0.1)
        workers = children(process.pid)
        assert len(workers) == 2
        os.kill(max(workers), signal.SIGKILL)
        killed = time.monotonic()
        output, _ = process.communicate(timeout=90)
        assert time.monotonic() - killed < 90
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "SIGKILL" in output or "exitcode" in output, output[-2000:]
