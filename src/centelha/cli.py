"""The `centelha` command: parse arguments, call the library, print the result.

No logic lives here that the library lacks. A `CentelhaError` (bad input) becomes one red
line on stderr and exit status 1; anything else is a bug and keeps its traceback.

User and model text (prompts, replies, model names, paths) is never read as rich markup:
both consoles have markup off, and styles come from `Text` and `style=`, so `a[/]b`
prints as typed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from centelha.errors import CentelhaError
from centelha.fielddocs import help_for

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build, train and run GPT-style language models on your own hardware.")
console = Console(markup=False)  # what is printed is text, never markup (see above)
err_console = Console(stderr=True)


@app.command()
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Files or folders of .txt, .md or .jsonl"),
    out: Path = typer.Option(..., "--out", help="Folder for the tokenizer and token shards"),
    vocab_size: int = typer.Option(4096, help="Tokenizer vocabulary size"),
    tokenizer: str = typer.Option("bpe", help="bpe (byte-level BPE) or char (characters)"),
    val_fraction: float = typer.Option(0.05, help="Share of documents held out for validation"),
    redact: bool = typer.Option(False, "--redact", help="Mask e-mails, phones, CPF/CNPJ, cards"),
    seed: int = typer.Option(0, help="Seed of the train/val split"),
) -> None:
    """Turn text files into a tokenizer and train/val token shards."""
    from centelha.data import prepare as prepare_data

    prepared = prepare_data(inputs, out, vocab_size=vocab_size, kind=tokenizer,
                            val_fraction=val_fraction, redact_personal=redact, seed=seed)
    meta = prepared.meta
    table = Table(title=f"prepared {out}")
    for column in ("split", "documents", "tokens", "shards"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, split in meta["splits"].items():
        table.add_row(name, f"{split['documents']:,}", f"{split['tokens']:,}",
                      str(len(split["shards"])))
    console.print(table)
    console.print(f"tokenizer: {meta['tokenizer_kind']}, {meta['vocab_size']:,} tokens, "
                  f"ids stored as {meta['dtype']}; unigram baseline on val: "
                  f"{meta['unigram_val_loss']:.3f} nats/token")


@app.command()
def train(
    config: str = typer.Option(None, help="YAML config file (or a bundled name: tiny)"),
    data: Path = typer.Option(None, help="Prepared data folder (from `centelha prepare`)"),
    out: Path = typer.Option(None, help="Run folder for checkpoints, log and plot"),
    resume: Path = typer.Option(None, help="Continue the run in this folder"),
    max_steps: int = typer.Option(None, help=help_for("train", "max_steps")),
    batch_size: int = typer.Option(None, help=help_for("train", "batch_size")),
    lr: float = typer.Option(None, help=help_for("train", "lr")),
    device: str = typer.Option(None, help=help_for("train", "device")),
    compile: bool = typer.Option(None, "--compile/--no-compile",
                                 help=help_for("train", "compile")),
    set_: list[str] = typer.Option([], "--set", help="Override any key: train.lr=3e-4 "
                                   "(`centelha config train` lists them)"),
    stop_after: int = typer.Option(None, help="Stop (checkpointed) after this many steps"),
    strategy: str = typer.Option("ddp", help="Under torchrun: ddp (replicas) or fsdp (sharded)"),
) -> None:
    """Pretrain a model by next-token prediction (or resume a run); under torchrun, on
    every process it starts."""
    import os

    from centelha.train import load_run_config
    from centelha.train import train as run_training
    from centelha.train.config import parse_sets

    if os.environ.get("RANK", "0") != "0":
        console.quiet = True  # one voice: rank 0's
    if resume is not None:
        result = run_training(None, resume, resume=True, stop_after=stop_after,
                              strategy=strategy)
    else:
        if config is None or data is None or out is None:
            raise CentelhaError("train needs --config, --data and --out (or --resume RUN_DIR)")
        overrides = parse_sets(set_)
        flags = {"max_steps": max_steps, "batch_size": batch_size, "lr": lr, "device": device,
                 "compile": compile}
        overrides.update({f"train.{k}": v for k, v in flags.items() if v is not None})
        run_cfg = load_run_config(config, overrides)
        result = run_training(data, out, run_cfg, stop_after=stop_after, strategy=strategy)
    ppl = f"{result.val_perplexity:.2f}" if result.val_perplexity else "n/a"
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    console.print(f"step {result.step}: train loss {result.train_loss:.4f}, val loss {val} "
                  f"(perplexity {ppl}); checkpoint in {result.run_dir}")


from centelha.cli_eval import ADAPTER_HELP  # noqa: E402 - one wording for every command


@app.command()
def generate(
    model: str = typer.Argument(..., help="Checkpoint or HF folder, .gguf file, or model name"),
    prompt: str = typer.Option(..., help="Text to continue"),
    max_new_tokens: int = typer.Option(200, help=help_for("sampling", "max_new_tokens")),
    temperature: float = typer.Option(0.8, help=help_for("sampling", "temperature")),
    top_k: int = typer.Option(None, help=help_for("sampling", "top_k")),
    top_p: float = typer.Option(None, help=help_for("sampling", "top_p")),
    min_p: float = typer.Option(None, help=help_for("sampling", "min_p")),
    repetition_penalty: float = typer.Option(1.0, help=help_for("sampling",
                                                                "repetition_penalty")),
    stop: list[str] = typer.Option([], help=help_for("sampling", "stop") + " (repeatable)"),
    seed: int = typer.Option(None, help=help_for("sampling", "seed")),
    dtype: str = typer.Option("fp32", help="Weights: fp32, bf16, int8, int4 or native"),
    adapter: Path = typer.Option(None, help=ADAPTER_HELP),
) -> None:
    """Continue a prompt, streaming the text as it is generated."""
    from centelha.api import load

    llm = load(model, dtype=dtype, adapter=adapter)
    pieces = llm.stream(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, min_p=min_p,
                        repetition_penalty=repetition_penalty, stop=stop, seed=seed)
    first = next(pieces, "")  # errors (a prompt too long) surface before anything is printed
    console.print(Text(prompt, style="dim"), end="", soft_wrap=True)
    sys.stdout.write(first)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def chat(
    model: str = typer.Argument("smollm2-135m-instruct", help="Model name, folder or .gguf"),
    system: str = typer.Option(None, help="System prompt"),
    temperature: float = typer.Option(0.7, help=help_for("sampling", "temperature")),
    max_new_tokens: int = typer.Option(512, help="At most this many tokens per answer"),
    seed: int = typer.Option(None, help=help_for("sampling", "seed")),
    dtype: str = typer.Option("fp32", help="Weights: fp32, bf16, int8, int4 or native"),
    adapter: Path = typer.Option(None, help=ADAPTER_HELP),
) -> None:
    """Talk to a model in the terminal (/help lists the commands)."""
    from centelha.api import load
    from centelha.chat import ChatSession

    with console.status(Text(f"loading {model}…")):
        llm = load(model, dtype=dtype, adapter=adapter)
    session = ChatSession(llm, system, temperature=temperature,
                          max_new_tokens=max_new_tokens, seed=seed)
    console.print(Text.assemble((model, "bold"), " — type a message; /help for commands, "
                                "/exit to leave"))
    while True:
        try:
            line = console.input(Text(">>> ", style="bold green"))
        except EOFError:
            break
        if not repl_turn(session, line):
            break


def repl_turn(session, line: str) -> bool:
    """Answer one line of the chat REPL; False when the user leaves. Nothing a user types
    ends the session by accident: a bad command or setting is one red line, Ctrl-C stops
    the answer being written, and even a bug is reported in one line, keeping the
    conversation."""
    try:
        reply = session.handle(line)
        if reply.kind == "exit":
            return False
        if reply.kind == "notice":
            if reply.text:
                console.print(reply.text, style="dim", highlight=False)
            return True
        for piece in reply.pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        console.print("(stopped; that answer is not kept)", style="dim")
    except CentelhaError as e:
        print_error(str(e))
    except Exception as e:  # noqa: BLE001 - a bug must not cost the user their conversation
        print_error(f"internal error ({type(e).__name__}: {e}); the conversation is kept")
    return True


def print_error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False,
                      soft_wrap=True)


@app.command()
def serve(
    models: list[str] = typer.Argument(None, help="Models to serve (names, folders or .gguf); "
                                               "default: the bundled SmolLM2"),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes it)"),
    port: int = typer.Option(8000, help="Port"),
    api_key: str = typer.Option(None, envvar="CENTELHA_API_KEY", show_envvar=True,
                                help="Require 'Authorization: Bearer KEY' on /v1 (better "
                                     "from the environment: argv shows in ps and history)"),
    allowed_host: list[str] = typer.Option([], help="Also answer requests for this host "
                                           "name (repeatable); loopback names always work"),
    cors_origin: list[str] = typer.Option([], help="Let web pages from this origin call the "
                                          "API (repeatable), e.g. http://localhost:3000"),
    max_batch: int = typer.Option(8, help="Requests decoded together per model"),
    max_queue: int = typer.Option(32, help="Requests allowed to wait; more get 503"),
    dtype: str = typer.Option("fp32", help="Weights: fp32, bf16, int8, int4 or native"),
    max_context: int = typer.Option(4096, help="Positions per request (prompt + reply)"),
) -> None:
    """An OpenAI-compatible API and a web chat at http://HOST:PORT/."""
    from centelha.serve.server import run

    sources = models or ["smollm2-135m-instruct"]

    def ready(served) -> None:
        names = ", ".join(m.name for m in served)
        console.print(Text.assemble(f"serving {names} on ", (f"http://{host}:{port}/", "bold"),
                                    " (API at /v1)"
                                    + (" — API key required" if api_key else "")))

    console.print(f"loading {', '.join(sources)}…", style="dim")
    run(sources, host=host, port=port, api_key=api_key, dtype=dtype, max_batch=max_batch,
        max_queue=max_queue, max_context=max_context, allowed_hosts=allowed_host,
        cors_origins=cors_origin, on_ready=ready)


@app.command()
def convert(
    source: str = typer.Argument(..., help="Model to convert (folder, .gguf or name)"),
    to: str = typer.Option(..., help="hf or gguf"),
    out: Path = typer.Option(..., help="Output folder (hf) or file (gguf)"),
    dtype: str = typer.Option("f16", help="GGUF weights: f32, f16 or q8_0"),
) -> None:
    """Export a model as a Hugging Face folder or a GGUF file (llama.cpp, LM Studio)."""
    from centelha.formats.convert import convert as export

    result = export(source, to, out, dtype=dtype)
    if result["dequantized"]:
        console.print(f"dequantized {result['dequantized']} quantized layers to float32 "
                      "first", style="dim")
    console.print(f"wrote {out}")


@app.command()
def quantize(
    model: str = typer.Argument(..., help="Model folder, .gguf file or name"),
    to: str = typer.Option(..., help="int8 (per output channel) or int4 (group-wise)"),
    out: Path = typer.Option(..., help="Folder for the quantized checkpoint"),
    group_size: int = typer.Option(32, help="int4 group size: 32, 64 or 128"),
) -> None:
    """Write a checkpoint with int8 or int4 weights (safetensors), loadable by every command."""
    from centelha.quant.checkpoint import quantize_checkpoint

    out = quantize_checkpoint(model, out, method=to, group_size=group_size)
    size = (out / "model.safetensors").stat().st_size
    console.print(f"wrote {out} ({to}, {_human_size(size)})")


eval_app = typer.Typer(help="Measure a model: perplexity, generation metrics, benchmarks, "
                       "bias pairs, a classifier; compare two models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


lora_app = typer.Typer(help="LoRA adapters: merge one into its base, or export it.",
                       no_args_is_help=True)
app.add_typer(lora_app, name="lora")
BASE_HELP = "The base model, if not the one the adapter names (it moved)"


@lora_app.command("merge")
def lora_merge(
    adapter: Path = typer.Argument(..., help="Adapter folder (adapter.json + safetensors)"),
    out: Path = typer.Option(..., help="Checkpoint folder to write"),
    base: str = typer.Option(None, help=BASE_HELP),
) -> None:
    """Write base + adapter as one plain checkpoint (then convert, quantize or serve it)."""
    from centelha.lora.runs import merge_adapter

    console.print(f"wrote {merge_adapter(adapter, out, base)}")


@lora_app.command("export")
def lora_export(
    adapter: Path = typer.Argument(..., help="Adapter folder (adapter.json + safetensors)"),
    to: str = typer.Option(..., help="peft (a folder for PeftModel) or gguf (llama.cpp --lora)"),
    out: Path = typer.Option(..., help="Folder (peft) or .gguf file to write"),
    base: str = typer.Option(None, help=BASE_HELP),
) -> None:
    """Export an adapter for PEFT or llama.cpp."""
    from centelha.lora.runs import export_adapter

    console.print(f"wrote {export_adapter(adapter, to, out, base)}")


models_app = typer.Typer(help="The local model registry: names for model files and folders.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return str(size)


@models_app.command("list")
def models_list() -> None:
    """Registered models."""
    from centelha import registry

    table = Table()
    for column in ("name", "family", "parameters", "context", "quantization", "size", "path"):
        table.add_column(column)
    for name, entry in registry.entries().items():
        card = registry.card(name)
        cells = (name, card["family"], f"{card['parameters'] / 1e6:,.1f}M",
                 f"{card['context']:,}", card["quantization"],
                 _human_size(card["size_bytes"]), entry["path"])
        table.add_row(*(str(cell) for cell in cells))
    console.print(table)
    console.print(f"registry: {registry.registry_file()}", style="dim")


@models_app.command("show")
def models_show(name: str) -> None:
    """The model card of one registered model."""
    from centelha import registry

    card = registry.card(name)
    path = registry.entries()[name]["path"]
    for key, value in {"name": name, "path": path, **card}.items():
        shown = _human_size(value) if key == "size_bytes" else value
        console.print(Text.assemble((key, "bold"), f": {shown}"))


@models_app.command("add")
def models_add(path: Path, name: str = typer.Option(..., help="Short name to use")) -> None:
    """Register a model folder or .gguf file under a short name."""
    from centelha import registry

    card = registry.add(path, name)["card"]
    console.print(f"added {name}: {card['family']}, {card['parameters'] / 1e6:,.1f}M parameters")


@models_app.command("rm")
def models_rm(name: str) -> None:
    """Forget a registered name (the files stay where they are)."""
    from centelha import registry

    registry.remove(name)
    console.print(f"removed {name}")


@app.command("config")
def config_fields(
    section: str = typer.Argument(..., help="model, train or objective (YAML sections), "
                                  "or sampling"),
) -> None:
    """The keys of a config section, their defaults and what they mean."""
    from centelha.fielddocs import section_docs

    table = Table(title=f"{section} settings")
    for column in ("key", "type", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for doc in section_docs(section):
        table.add_row(doc.name, doc.kind, doc.default, doc.help)
    console.print(table)


@app.command()
def info(model: str = typer.Argument(..., help="Model folder, .gguf file or name")) -> None:
    """Architecture, parameter count and FLOPs per token of a checkpoint."""
    from centelha.loading import load_model
    from centelha.model import count_parameters, flops_per_token

    net, tokenizer, _ = load_model(model)
    cfg = net.cfg
    flops = flops_per_token(cfg)
    console.print(f"family {cfg.family}: {cfg.n_layer} layers, d_model {cfg.d_model}, "
                  f"{cfg.n_head} heads ({cfg.n_kv_head} kv), context {cfg.block_size}, "
                  f"vocab {cfg.vocab_size} ({tokenizer.kind})")
    console.print(f"parameters: {count_parameters(net):,}; FLOPs per token at full context: "
                  f"forward {flops['forward']:,}, training {flops['train']:,}")


@app.command()
def quickstart(
    workdir: Path = typer.Option(Path("."), help="Where data/ and runs/ are written"),
    max_steps: int = typer.Option(None, help="Override the bundled config's step count"),
) -> None:
    """Prepare the bundled Machado de Assis novels, pretrain a small model, sample it."""
    from centelha.quickstart import run_quickstart

    run_quickstart(workdir, console, max_steps=max_steps)


from centelha import cli_eval, cli_finetune  # noqa: E402 - they need `app` and `eval_app`

cli_finetune.register(app, eval_app)
cli_eval.register(eval_app)


def main() -> None:
    try:
        app()
    except CentelhaError as e:
        print_error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
