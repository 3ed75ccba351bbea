"""The measuring commands: `eval perplexity`, `eval generate`, `eval suite`, `eval pairs`
and `eval compare`. They parse flags, load the model and call `centelha.evaluate` and
`centelha.evals`; `cli.py` registers them (`register`). Every command can write its
figures as JSON (`--json`), for notebooks and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from centelha.atomic import atomic_write_text
from centelha.errors import CentelhaError

console = Console(markup=False)
MODEL_HELP = "Model folder, .gguf file or name"
DTYPE_HELP = "Weights: fp32, bf16, int8, int4 or native"
ADAPTER_HELP = "A LoRA adapter folder trained on this model, merged into its weights"
JSON_HELP = "Also write the figures to this JSON file"


def write_json(path: Path | None, figures: dict) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {path}")


def load_llm(model: str, dtype: str, adapter: Path | None):
    """A language model, or one line saying that `model` is something else."""
    from centelha.api import LLM, load

    llm = load(model, dtype=dtype, adapter=adapter)
    if not isinstance(llm, LLM):
        raise CentelhaError(f"{model} is a classifier; this measures language models "
                            "(use `centelha eval classify`)")
    return llm


def eval_perplexity(
    model: str = typer.Argument(..., help=MODEL_HELP),
    text: list[Path] = typer.Option(..., help="A UTF-8 text file or a folder of .txt files "
                                    "(repeat for more)"),
    dtype: str = typer.Option("fp32", help=DTYPE_HELP),
    window: int = typer.Option(None, help="Tokens per window (default: the context)"),
    stride: int = typer.Option(None, help="Step between windows (default: half a window)"),
    max_tokens: int = typer.Option(None, help="Score only the first N tokens of each file"),
    adapter: Path = typer.Option(None, help=ADAPTER_HELP),
    json_out: Path = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Perplexity and bits per byte, per file and overall (sliding window)."""
    from centelha.evaluate import perplexity_of_files, text_files
    from centelha.loading import load_model

    text_files(text)  # a missing file is reported before the model loads
    net, tokenizer, _ = load_model(model, dtype=dtype, adapter=adapter)
    with console.status("scoring") as status:
        report = perplexity_of_files(net, tokenizer, text, window, stride, max_tokens,
                                     progress=lambda name: status.update(f"scoring {name}"))
    table = Table("text", "tokens", "bytes", "nats/token", "perplexity", "bits/byte")
    rows = list(report.files.items())
    if len(rows) > 1:
        rows.append(("overall", report.overall))
    for name, r in rows:
        table.add_row(name, f"{r.tokens:,}", f"{r.bytes:,}", f"{r.nll:.4f}",
                      f"{r.perplexity:.3f}", f"{r.bits_per_byte:.4f}")
    console.print(table)
    write_json(json_out, {"model": model, "dtype": dtype, "window": window, "stride": stride,
                          **report.as_dict()})


def eval_generate(
    model: str = typer.Argument(..., help=MODEL_HELP),
    task: Path = typer.Argument(..., help="JSONL of {\"prompt\" or \"messages\", "
                                "\"reference\" or \"references\"}"),
    metrics: str = typer.Option("bleu,chrf,rouge,exact", help="Comma-separated: bleu, chrf, "
                                "rouge, exact"),
    out: Path = typer.Option(None, help="Folder for outputs.jsonl and scores.json"),
    dtype: str = typer.Option("fp32", help=DTYPE_HELP),
    adapter: Path = typer.Option(None, help=ADAPTER_HELP),
    max_new_tokens: int = typer.Option(128, help="Most tokens per answer"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_k: int = typer.Option(None, help="Sample from the k most likely tokens"),
    top_p: float = typer.Option(None, help="Nucleus sampling threshold"),
    seed: int = typer.Option(None, help="Sampler seed"),
    stop: list[str] = typer.Option(None, help="A string that ends an answer (repeatable)"),
    batch: int = typer.Option(8, help="Answers decoded together"),
    limit: int = typer.Option(None, help="Only the first N examples"),
    json_out: Path = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Answer a task's prompts and score them: BLEU, chrF, ROUGE, exact match."""
    from centelha.evals.generation import evaluate_generation, read_generation_task
    from centelha.sampling import SamplingConfig

    wanted = tuple(m.strip() for m in metrics.split(",") if m.strip())
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, stop=list(stop or []))
    read_generation_task(task)  # a bad task file is reported before the model loads
    llm = load_llm(model, dtype, adapter)
    with console.status(f"answering {task}"):
        report = evaluate_generation(llm, task, wanted, sampling, batch, limit, out)
    table = Table("metric", "score", "signature")
    for name, value in report.scores.items():
        if isinstance(value, dict):
            table.add_row(name, f"{value['score']:.2f}", value["signature"])
        else:
            table.add_row(name, f"{value:.2f}", "")
    console.print(f"{len(report.examples)} examples")
    console.print(table)
    if out is not None:
        console.print(f"outputs and scores in {out}")
    write_json(json_out, {"model": model, "dtype": dtype, "task": str(task),
                          "scores": report.scores, "examples": len(report.examples)})


def register(eval_app: typer.Typer) -> None:
    eval_app.command("perplexity")(eval_perplexity)
    eval_app.command("generate")(eval_generate)
