"""One loop, four objectives (issue 12, part 1): each trains a tiny model from a saved
base through `train.init_from`, improves what it claims to, publishes what users load,
and resumes exactly (N steps == N/2 + resume + N/2, bit for bit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from centelha.errors import CentelhaError
from centelha.train import load_run_config
from centelha.train.loop import read_log, train


def config(base: Path, kind: str, steps: int, lr: float = 3e-3, **objective):
    return load_run_config(base={
        "train": {"init_from": str(base), "max_steps": steps, "batch_size": 4,
                  "grad_accum": 2, "lr": lr, "warmup_steps": 2, "eval_interval": steps,
                  "log_interval": 1, "ckpt_interval": 0, "seed": 7, "device": "cpu",
                  "precision": "fp32"},
        "objective": {"kind": kind, "held_out": 0.25, **objective},
        "lora": {"r": 4, "alpha": 8}})


def trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    name = "classifier.safetensors" if (run / "classifier.json").is_file() \
        else "adapter.safetensors"
    return load_file(str(run / name))


def assert_resume_is_exact(data: Path, cfg_of, tmp_path: Path) -> None:
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(data, straight, cfg_of(), show_progress=False)
    train(data, halves, cfg_of(), stop_after=3, show_progress=False)
    train(None, halves, resume=True, show_progress=False)
    a, b = trained_tensors(straight), trained_tensors(halves)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = lambda run: [r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r]  # noqa: E731
    assert losses(straight) == losses(halves)


# -- classification -------------------------------------------------------------------------
def test_a_classifier_learns_publishes_and_predicts(chat_base, labelled, tmp_path):
    from centelha.objectives.classifier import load_classifier

    result = train(labelled, tmp_path / "run", config(chat_base, "classify", 30),
                   show_progress=False)
    rows = read_log(tmp_path / "run" / "log.jsonl")
    first, last = rows[0]["loss"], [r["loss"] for r in rows if "loss" in r][-1]
    assert last < first / 2
    assert result.metrics["val_accuracy"] >= 0.9
    assert 0 < result.trainable < result.params  # adapters and head only
    classifier = load_classifier(tmp_path / "run")
    assert classifier.labels == ["bicho", "lugar"]
    guess = classifier.predict("vi o rato ontem (999)")
    assert guess.label == "bicho" and guess.probabilities["bicho"] > 0.5
    assert (tmp_path / "run" / "metrics.png").is_file()


def test_a_classifier_resumes_exactly(chat_base, labelled, tmp_path):
    assert_resume_is_exact(labelled, lambda: config(chat_base, "classify", 6), tmp_path)


@pytest.mark.parametrize("scope", ["head", "last-k", "full"])
def test_every_classification_scope_trains_what_it_says(chat_base, labelled, tmp_path, scope):
    result = train(labelled, tmp_path / scope, config(chat_base, "classify", 2, scope=scope,
                                                     pooling="mean"), show_progress=False)
    saved = trained_tensors(tmp_path / scope)
    assert {"head.weight", "head.bias"} <= saved.keys()
    blocks = {name.split(".")[2] for name in saved if name.startswith("body.blocks.")}
    assert blocks == {"head": set(), "last-k": {"0", "1"}, "full": {"0", "1"}}[scope]
    assert result.trainable == (result.params if scope == "full" else sum(
        t.numel() for t in saved.values()))


# -- SFT ------------------------------------------------------------------------------------
def test_sft_lowers_the_held_out_loss_and_publishes_an_adapter(chat_base, conversations,
                                                               tmp_path):
    import centelha

    run = tmp_path / "sft"
    before = train(conversations, tmp_path / "zero", config(chat_base, "sft", 1,
                                                           pack=True), show_progress=False)
    after = train(conversations, run, config(chat_base, "sft", 40, lr=3e-2),
                  show_progress=False)
    assert after.val_loss < before.val_loss - 1.5  # nats per answer token
    assert json.loads((run / "adapter.json").read_text())["base"] == str(chat_base)
    llm = centelha.load(run)  # an adapter run loads on its base
    assert llm.info["adapter"] == str(run)


def test_sft_resumes_exactly(chat_base, conversations, tmp_path):
    assert_resume_is_exact(conversations, lambda: config(chat_base, "sft", 6), tmp_path)


# -- DPO ------------------------------------------------------------------------------------
def test_a_tiny_dpo_run_increases_the_margin(chat_base, pairs, tmp_path):
    result = train(pairs, tmp_path / "dpo", config(chat_base, "dpo", 20, beta=0.5),
                   show_progress=False)
    rows = read_log(tmp_path / "dpo" / "log.jsonl")
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # policy == reference
    assert result.metrics["eval_rewards/margins"] > 1.0
    assert result.metrics["eval_rewards/accuracies"] == 1.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert key in rows[-2] or key in rows[-1]


def test_the_nll_term_keeps_the_chosen_answers_likely(chat_base, pairs, tmp_path):
    plain = train(pairs, tmp_path / "plain", config(chat_base, "dpo", 12, lr=1e-2, beta=0.5),
                  show_progress=False)
    kept = train(pairs, tmp_path / "kept", config(chat_base, "dpo", 12, lr=1e-2, beta=0.5,
                                                  nll_weight=1.0), show_progress=False)
    assert kept.metrics["eval_rewards/chosen"] > plain.metrics["eval_rewards/chosen"]


def test_dpo_resumes_exactly(chat_base, pairs, tmp_path):
    assert_resume_is_exact(pairs, lambda: config(chat_base, "dpo", 6), tmp_path)


# -- continued pretraining and errors ---------------------------------------------------------
def test_continued_pretraining_starts_from_the_models_weights(chat_base, tmp_path):
    from centelha.data import prepare
    from centelha.loading import load_model

    corpus = tmp_path / "contos"
    corpus.mkdir()
    for n in range(4):
        (corpus / f"{n}.txt").write_text(f"O rato {n} roeu a roupa do rei de Roma. " * 100,
                                         encoding="utf-8")
    _, tokenizer, _ = load_model(chat_base)
    data = prepare([corpus], tmp_path / "data", tokenizer=tokenizer, val_fraction=0.25,
                   show_progress=False)
    still = config(chat_base, "pretrain", 1, lr=1e-12, scope="full")
    train(data.path, tmp_path / "still", still, show_progress=False)
    base = load_file(str(chat_base / "model.safetensors"))
    after = load_file(str(tmp_path / "still" / "model.safetensors"))
    assert base.keys() == after.keys()
    for name in base:  # a step of lr 1e-12 leaves the saved weights where they were
        assert torch.allclose(base[name], after[name], atol=1e-6), name
    first = train(data.path, tmp_path / "one", config(chat_base, "pretrain", 1),
                  show_progress=False)
    more = train(data.path, tmp_path / "cpt", config(chat_base, "pretrain", 20, lr=3e-2,
                                                    scope="lora"), show_progress=False)
    assert more.val_loss < first.val_loss - 1
    assert json.loads((tmp_path / "cpt" / "adapter.json").read_text())["base"] == \
        str(chat_base)


def test_fine_tuning_needs_a_model_to_start_from(labelled, tmp_path):
    cfg = load_run_config(base={"objective": {"kind": "classify"}})
    with pytest.raises(CentelhaError, match="set train.init_from"):
        train(labelled, tmp_path / "run", cfg, show_progress=False)


@pytest.mark.parametrize("section, match", [
    ({"objective": {"kind": "clasify"}}, "objective.kind must be one of"),
    ({"objective": {"kind": "sft", "scope": "head"}}, "a sft run takes full or lora"),
    ({"objective": {"kind": "dpo", "scope": "full"}}, "must be lora for dpo"),
    ({"objective": {"beta": 0}}, "objective.beta must be a number > 0"),
    ({"objective": {"nll_weight": -1}}, "objective.nll_weight must be a number ≥ 0"),
    ({"objective": {"pooling": "max"}}, "objective.pooling must be one of last, mean"),
    ({"objective": {"held_out": 1.5}}, "objective.held_out"),
    ({"objective": {"typo": 1}}, "unknown config key 'objective.typo'"),
    ({"lora": {"rank": 8}}, "unknown config key 'lora.rank'"),
    ({"lora": {"r": 0}}, "rank r must be"),
])
def test_a_bad_objective_or_lora_section_is_one_line(section, match):
    with pytest.raises(CentelhaError, match=match):
        load_run_config(base=section)


def test_a_model_section_beside_init_from_is_refused(chat_base, labelled, tmp_path):
    cfg = config(chat_base, "classify", 1)
    cfg.model = {"n_layer": 4}
    with pytest.raises(CentelhaError, match="leave the model section"):
        train(labelled, tmp_path / "run", cfg, show_progress=False)
