"""The fine-tuning commands: `finetune classify|sft|dpo|pretrain`, `predict` and
`eval classify`. They parse flags and call `centelha.finetune.runs` and
`centelha.finetune.predictions`; `cli.py` registers them (`register`).

Every `finetune` command takes the same flags: the common training settings, the LoRA
settings, `--config` (a YAML file with the `train:`, `objective:` and `lora:` sections),
`--set KEY=VALUE` for anything else, and `--resume RUN_DIR` to continue a run (then no
model or data is given: the run folder remembers them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console

from centelha.errors import CentelhaError
from centelha.fielddocs import help_for

console = Console(markup=False)
finetune_app = typer.Typer(help="Fine-tune a model: classify, sft, dpo or pretrain (continued "
                           "pretraining on your text).", no_args_is_help=True)

DATA_HELP = {
    "classify": "Labelled texts: .tsv, .csv or .jsonl with a text and a label column",
    "sft": "Conversations: .jsonl of {\"messages\": [...]}",
    "dpo": "Preference pairs: .jsonl of {\"prompt\", \"chosen\", \"rejected\"}",
    "pretrain": "Text files or a folder of them (.txt, .md, .jsonl), or a prepared folder",
}


def _run(kind: str, model: str | None, data: Path | None, out: Path | None,
         resume: Path | None, config: str | None, flags: dict, sets: list[str],
         stop_after: int | None, strategy: str) -> None:
    from centelha.finetune.runs import finetune, resume_finetune
    from centelha.train.config import parse_sets

    if os.environ.get("RANK", "0") != "0":
        console.quiet = True  # one voice: rank 0's
    if resume is not None:
        result = resume_finetune(resume, stop_after=stop_after, strategy=strategy)
    else:
        if model is None or data is None or out is None:
            raise CentelhaError(f"finetune {kind} needs MODEL, --data and --out "
                                "(or --resume RUN_DIR)")
        overrides = parse_sets(sets)
        overrides.update({key: value for key, value in flags.items() if value is not None})
        result = finetune(kind, model, data, out, config, overrides, stop_after=stop_after,
                          strategy=strategy)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()
                      if not k.startswith("val_f1/"))
    console.print(f"step {result.step}: train loss {result.train_loss:.4f}; {shown}; "
                  f"trained {result.trainable:,} of {result.params:,} parameters in "
                  f"{result.seconds / 60:.1f} min; run in {result.run_dir}")


def _command(kind: str):
    def command(
        model: str = typer.Argument(None, help="The model to start from: a registry name, a "
                                    "folder, a .gguf file, or an earlier fine-tune"),
        data: Path = typer.Option(None, help=DATA_HELP[kind]),
        out: Path = typer.Option(None, help="Run folder (checkpoints, log, plots, result)"),
        resume: Path = typer.Option(None, help="Continue the run in this folder"),
        config: str = typer.Option(None, help="YAML config (train:, objective:, lora:)"),
        val_data: Path = typer.Option(None, help=help_for("objective", "val_data")),
        scope: str = typer.Option(None, help=help_for("objective", "scope")),
        lora_r: int = typer.Option(None, help="LoRA rank (scope lora)"),
        lora_alpha: float = typer.Option(None, help="LoRA alpha (default 2 × rank)"),
        lora_targets: str = typer.Option(None, help="Comma-separated module-name patterns"),
        max_steps: int = typer.Option(None, help=help_for("train", "max_steps")),
        batch_size: int = typer.Option(None, help=help_for("train", "batch_size")),
        lr: float = typer.Option(None, help=help_for("train", "lr")),
        max_length: int = typer.Option(None, help=help_for("objective", "max_length")),
        beta: float = typer.Option(None, help=help_for("objective", "beta")),
        precision: str = typer.Option(None, help=help_for("train", "precision")),
        set_: list[str] = typer.Option([], "--set", help="Override any key: objective.pooling="
                                       "mean (`centelha config train` lists train keys)"),
        stop_after: int = typer.Option(None, help="Stop (checkpointed) after this many steps"),
        strategy: str = typer.Option("ddp", help="Under torchrun: ddp or fsdp"),
    ) -> None:
        flags = {"objective.val_data": str(val_data) if val_data else None,
                 "objective.scope": scope, "objective.max_length": max_length,
                 "objective.beta": beta if kind == "dpo" else None,
                 "lora.r": lora_r, "lora.alpha": lora_alpha, "lora.targets": lora_targets,
                 "train.max_steps": max_steps, "train.batch_size": batch_size,
                 "train.lr": lr, "train.precision": precision}
        if beta is not None and kind != "dpo":
            raise CentelhaError("--beta is a DPO setting")
        _run(kind, model, data, out, resume, config, flags, set_, stop_after, strategy)

    command.__doc__ = {
        "classify": "Train a classifier (a head on the model's hidden state) on labelled "
                    "texts.",
        "sft": "Instruction-tune on chat conversations (loss on the assistant's tokens).",
        "dpo": "Preference-tune with DPO on chosen/rejected pairs (reference: the model "
               "as it starts).",
        "pretrain": "Continue pretraining on your own text, with the model's tokenizer.",
    }[kind]
    return command


for _kind in ("classify", "sft", "dpo", "pretrain"):
    finetune_app.command(_kind)(_command(_kind))


def predict(
    run: Path = typer.Argument(..., help="A classifier run folder (finetune classify)"),
    text: str = typer.Argument(None, help="A text to classify"),
    data: Path = typer.Option(None, help="Classify every text of a .txt, .jsonl, .tsv or "
                              ".csv file"),
    out: Path = typer.Option(None, help="With --data: the JSONL file to write"),
    text_column: str = typer.Option("text", help="The text's column (or JSON key)"),
) -> None:
    """Classify a text (label and probability) or every text of a file (JSON lines)."""
    from centelha.finetune.predictions import predict_file
    from centelha.objectives.classifier import load_classifier

    if (text is None) == (data is None):
        raise CentelhaError("predict takes a TEXT or --data FILE (one of them)")
    classifier = load_classifier(run)
    if text is not None:
        guess = classifier.predict(text)
        console.print(f"{guess.label} {guess.probabilities[guess.label]:.2f}")
        return
    if out is None:
        raise CentelhaError("predict --data needs --out FILE.jsonl")
    count = predict_file(classifier, data, out, text_column)
    console.print(f"wrote {count} predictions to {out}")


def eval_classify(
    run: Path = typer.Argument(..., help="A classifier run folder (finetune classify)"),
    data: Path = typer.Option(..., help="Labelled texts (.tsv, .csv or .jsonl)"),
    png: Path = typer.Option(None, help="Confusion-matrix PNG (default: beside the data, "
                             "<data>.confusion.png)"),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON"),
    text_column: str = typer.Option("text", help="The text's column (or JSON key)"),
    label_column: str = typer.Option("label", help="The label's column (or JSON key)"),
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on labelled texts."""
    from centelha.finetune.classify_metrics import format_report
    from centelha.finetune.predictions import evaluate_file
    from centelha.objectives.classifier import load_classifier

    png = png or data.with_suffix(".confusion.png")
    report = evaluate_file(load_classifier(run), data, png, text_column, label_column)
    console.print(format_report(report))
    console.print(f"confusion matrix: {png}")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.add_typer(finetune_app, name="finetune")
    app.command("predict")(predict)
    eval_app.command("classify")(eval_classify)
