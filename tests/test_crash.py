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

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

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


# -- the state folders themselves, without a subprocess -------------------------------------
@pytest.fixture
def saver(prepared):
    """save(run, step, mark): a training state of a tiny model whose info carries `mark`."""
    from centelha.checkpoint import save_training_state
    from centelha.model import Transformer
    from centelha.tokenizer import Tokenizer
    from tests.conftest import tiny_config

    tokenizer = Tokenizer.load(prepared / "tokenizer.json")
    model = Transformer(tiny_config(vocab_size=tokenizer.vocab_size))
    optimizer = torch.optim.AdamW(model.parameters())
    tokens = torch.randint(tokenizer.vocab_size, (2, 8))
    model(tokens, tokens)[1].backward()
    optimizer.step()  # so that the state holds optimizer moments

    def save(run, step, mark):
        return save_training_state(run, step, model, optimizer, tokenizer,
                                   {"rng.torch": torch.get_rng_state()}, {"mark": mark})

    return save


def crash_when_a_new_state_is_renamed_in(monkeypatch):
    """os.replace dies on the rename of a written `.tmp-…` state into its step's name."""
    import os

    real_replace = os.replace

    def dying_replace(src, dst, *args, **kwargs):
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError("simulated crash")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying_replace)


def test_a_crash_while_resaving_a_step_keeps_a_complete_state(saver, tmp_path, monkeypatch):
    from centelha.checkpoint import clean_partial_states, latest_state, load_training_state

    run = tmp_path / "run"
    saver(run, 5, "old")
    with monkeypatch.context() as patch:
        crash_when_a_new_state_is_renamed_in(patch)
        with pytest.raises(OSError, match="simulated crash"):
            saver(run, 5, "new")
    # the old state of step 5 is still found, and it is whole
    state = latest_state(run)
    assert state is not None
    _, optimizer, info = load_training_state(state)
    assert info["step"] == 5 and info["mark"] == "old" and optimizer["state"]
    # resume's clean-up moves it back to its own name and removes the rest
    clean_partial_states(run)
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step_0000005"]
    assert load_training_state(latest_state(run))[2]["mark"] == "old"
    # and a save that does not crash replaces it, leaving nothing aside
    saver(run, 5, "new")
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step_0000005"]
    assert load_training_state(latest_state(run))[2]["mark"] == "new"


def test_a_state_left_aside_beside_its_replacement_is_dropped(saver, tmp_path):
    """A crash after the new state is in place but before the aside copy was deleted."""
    import shutil

    from centelha.checkpoint import clean_partial_states, latest_state, load_training_state

    run = tmp_path / "run"
    saver(run, 5, "old")
    old_copy = shutil.copytree(run / "state" / "step_0000005", tmp_path / "old-copy")
    aside = run / "state" / ".old-step_0000005"
    shutil.copytree(old_copy, aside)
    saver(run, 5, "new")  # a leftover aside copy does not stop a save
    shutil.copytree(old_copy, aside, dirs_exist_ok=True)
    assert load_training_state(latest_state(run))[2]["mark"] == "new"
    clean_partial_states(run)
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step_0000005"]
    assert load_training_state(latest_state(run))[2]["mark"] == "new"


def test_states_sort_by_step_number_not_by_name(saver, tmp_path):
    from centelha.checkpoint import latest_state, load_training_state, state_dirs

    run = tmp_path / "run"
    saver(run, 9_999_999, "before")
    saver(run, 10_000_000, "after")  # keeps one state: must drop the older, not the newer
    assert [p.name for p in state_dirs(run)] == ["step_10000000"]
    assert load_training_state(latest_state(run))[2]["step"] == 10_000_000
    # with both present (keep > 1, or by hand) and malformed names beside them
    for name in ("step_9999999", "step_abc", "step_12.bak", "step_", ".tmp-x"):
        (run / "state" / name).mkdir()
    (run / "state" / "step_0000001").write_text("a file, not a state")
    assert [p.name for p in state_dirs(run)] == ["step_9999999", "step_10000000"]
    assert latest_state(run).name == "step_10000000"
