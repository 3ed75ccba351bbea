"""Crash safety: SIGKILL a training process at random moments and inside a checkpoint
write; every time the run still resumes, and it ends with exactly the weights of a run
that was never interrupted."""

import random
import signal
import subprocess
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import PYTHON, TINY_RUN, cli_env

STEPS = 40
CONFIG = {"model": TINY_RUN["model"],
          "train": {**TINY_RUN["train"], "max_steps": STEPS, "ckpt_interval": 1,
                    "eval_interval": 10}}

# Runs the CLI with safetensors' writer wrapped so that the process kills itself in the
# middle of its Nth file write, after half of the bytes are on disk.
KILL_DURING_WRITE = """
import os, signal, sys
import centelha.checkpoint as ck
target, calls = int(sys.argv[1]), [0]
real_save = ck.save_file
def dying_save(tensors, path, *args, **kwargs):
    calls[0] += 1
    real_save(tensors, path, *args, **kwargs)
    if calls[0] == target:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = dying_save
sys.argv = ["centelha"] + sys.argv[2:]
from centelha.cli import main
main()
"""


def train_args(prepared, config, run):
    return ["train", "--config", str(config), "--data", str(prepared), "--out", str(run)]


def resume_args(run):
    return ["train", "--resume", str(run)]


def args_for(prepared, config, run):
    return resume_args(run) if (run / "run.yaml").exists() else train_args(prepared, config, run)


def run_cli(args, timeout=120):
    return subprocess.run([PYTHON, "-m", "centelha", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=timeout)


def weights(run):
    return load_file(run / "model.safetensors")


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = run_cli(train_args(prepared, config, root / "run"))
    assert result.returncode == 0, result.stderr
    return config, weights(root / "run")


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_sigkills_never_lose_the_run(prepared, reference, tmp_path):
    config, expected = reference
    run = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen([PYTHON, "-m", "centelha", *args_for(prepared, config, run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
        time.sleep(rng.uniform(2.0, 5.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if (run / "state").exists() and sorted((run / "state").glob("step_*")):
            # whatever state survived must be a whole one
            latest = sorted((run / "state").glob("step_*"))[-1]
            load_file(latest / "model.safetensors")
    assert kills >= 3
    result = run_cli(args_for(prepared, config, run))
    assert result.returncode == 0, result.stderr
    assert_same(weights(run), expected)


@pytest.mark.parametrize("write_number", [1, 2, 7, 8])
def test_kill_inside_a_checkpoint_write(prepared, reference, tmp_path, write_number):
    config, expected = reference
    run = tmp_path / "run"
    proc = subprocess.run([PYTHON, "-c", KILL_DURING_WRITE, str(write_number),
                           *train_args(prepared, config, run)],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    result = run_cli(resume_args(run))
    assert result.returncode == 0, result.stderr
    assert_same(weights(run), expected)
