"""Fine-tuning under torchrun (gloo, 2 CPU processes): a LoRA classifier and a LoRA SFT
run on 2 ranks, DDP or FSDP, follow one process with the same global batch, step for
step, and a run saved by 2 ranks resumes on 1."""

from __future__ import annotations

import pytest
from test_distributed import centelha, losses

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out

FLAGS = ["--max-steps", "6", "--lora-r", "4", "--set", "train.warmup_steps=1",
         "--set", "train.lr=3e-3", "--set", "train.threads=1", "--set", "train.device=cpu",
         "--set", "train.log_interval=1", "--set", "train.eval_interval=3",
         "--set", "train.ckpt_interval=3", "--set", "train.precision=fp32"]  # see CONFIG


@pytest.mark.parametrize("kind", ["classify", "sft"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_follow_one_process(chat_base, labelled, conversations, tmp_path, kind,
                                      strategy):
    data = labelled if kind == "classify" else conversations
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["finetune", kind, str(chat_base), "--data", str(data), *FLAGS]
    centelha(*common, "--out", str(one), "--batch-size", "8")
    result = centelha(*common, "--out", str(two), "--batch-size", "4", "--strategy",
                      strategy, ranks=2)
    assert "4 × 1 accumulation × 2 rank(s)" in " ".join(result.stdout.split())
    assert losses(two) == pytest.approx(losses(one), abs=1e-4)


def test_a_run_saved_by_two_ranks_resumes_on_one(chat_base, labelled, tmp_path):
    common = ["finetune", "classify", str(chat_base), "--data", str(labelled), *FLAGS]
    centelha(*common, "--out", str(tmp_path / "one"), "--batch-size", "8")
    centelha(*common, "--out", str(tmp_path / "two"), "--batch-size", "4", "--stop-after",
             "3", ranks=2)
    centelha("finetune", "classify", "--resume", str(tmp_path / "two"))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
