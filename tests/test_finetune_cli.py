"""`centelha finetune …`, `predict` and `eval classify`: flags and YAML reach the loop,
`--resume` continues, outputs are what users load, and bad input is one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from centelha.cli import app
from centelha.finetune.runs import finetune_config

SHORT = ["--max-steps", "4", "--batch-size", "4", "--set", "train.warmup_steps=1",
         "--set", "train.device=cpu", "--set", "train.precision=fp32"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_classify_then_predict_and_evaluate(chat_base, labelled, tmp_path):
    run = tmp_path / "spam"
    result = cli("finetune", "classify", chat_base, "--data", labelled, "--out", run,
                 "--lora-r", "4", "--stop-after", "2", *SHORT)
    assert result.exit_code == 0, result.output
    assert "step 2:" in result.output
    result = cli("finetune", "classify", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "step 4:" in result.output and "val_accuracy" in result.output

    result = cli("predict", run, "vi o rato ontem")
    assert result.exit_code == 0, result.output
    label, probability = result.output.split()
    assert label in ("bicho", "lugar") and 0.5 <= float(probability) <= 1

    preds = tmp_path / "preds.jsonl"
    result = cli("predict", run, "--data", labelled, "--out", preds)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 120 and {"line", "text", "label", "probabilities", "true"} <= rows[0].keys()
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    png, report = tmp_path / "confusion.png", tmp_path / "report.json"
    result = cli("eval", "classify", run, "--data", labelled, "--png", png, "--json", report)
    assert result.exit_code == 0, result.output
    assert "precision" in result.output and png.stat().st_size > 0
    assert json.loads(report.read_text())["examples"] == 120


def test_sft_and_dpo_from_the_command_line(chat_base, conversations, pairs, tmp_path):
    import centelha

    result = cli("finetune", "sft", chat_base, "--data", conversations, "--out",
                 tmp_path / "sft", *SHORT)
    assert result.exit_code == 0, result.output
    result = cli("finetune", "dpo", tmp_path / "sft", "--data", pairs, "--out",
                 tmp_path / "dpo", "--beta", "0.2", *SHORT)
    assert result.exit_code == 0, result.output
    assert "eval_rewards/accuracies" in result.output
    description = json.loads((tmp_path / "dpo" / "adapter.json").read_text())
    assert description["base"] == str(tmp_path / "sft")  # DPO on top of the SFT adapter
    llm = centelha.load(tmp_path / "dpo")  # the base, the SFT adapter, then DPO's
    assert llm.generate("Diga sim", max_new_tokens=2, temperature=0) is not None


def test_a_yaml_config_sets_the_sections_and_flags_win(tmp_path):
    config = tmp_path / "spam.yaml"
    config.write_text("train:\n  max_steps: 77\n  lr: 2e-4\nobjective:\n  pooling: mean\n"
                      "lora:\n  r: 16\n", encoding="utf-8")
    cfg = finetune_config("classify", "base", config, {"train.lr": 1e-3})
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.init_from) == (77, 1e-3, "base")
    assert cfg.objective.kind == "classify" and cfg.objective.pooling == "mean"
    assert cfg.lora == {"r": 16}
    assert cfg.train.weight_decay == 0.0  # the fine-tuning default, not pretraining's
    assert finetune_config("dpo", "base").train.lr == 2e-4  # DPO's own, lower default


@pytest.mark.parametrize("args, message", [
    (["finetune", "classify", "--data", "x.tsv"], "needs MODEL, --data and --out"),
    (["finetune", "sft", "{base}", "--data", "{missing}", "--out", "{out}"], "data not found"),
    (["finetune", "sft", "{base}", "--data", "{labelled}", "--out", "{out}", "--beta", "0.1"],
     "--beta is a DPO setting"),
    (["finetune", "classify", "{base}", "--data", "{labelled}", "--out", "{out}", "--scope",
      "lots"], "objective.scope must be one of"),
    (["finetune", "classify", "--resume", "{out}"], "nothing to resume"),
    (["predict", "{out}", "text"], "not found"),
    (["predict", "{base}"], "a TEXT or --data FILE"),
])
def test_bad_input_is_one_line(chat_base, labelled, tmp_path, args, message):
    values = {"base": chat_base, "labelled": labelled, "missing": tmp_path / "no.jsonl",
              "out": tmp_path / "run"}
    result = cli(*[a.format(**{k: str(v) for k, v in values.items()}) for a in args])
    assert result.exit_code != 0
    assert message in str(result.exception), result.output
