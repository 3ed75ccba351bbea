"""`centelha quickstart`: the whole pipeline in one command, on the bundled novels.

prepare (tokenizer + shards) → pretrain a small GPT on 2 CPU cores → sample it under
three decoding strategies → report validation loss against the unigram baseline. It is
what `make demo` runs, so it must finish in a few minutes on a laptop.
"""

from __future__ import annotations

import math
import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from centelha.api import load
from centelha.data import prepare
from centelha.train import load_run_config, train

PROMPT = "Capitu olhou para mim e"
STRATEGIES = {
    "greedy (temperature 0)": dict(max_new_tokens=60, temperature=0),
    "temperature 0.8, top-k 40": dict(max_new_tokens=60, temperature=0.8, top_k=40, seed=1),
    "temperature 1.0, top-p 0.9, repetition penalty 1.2": dict(
        max_new_tokens=60, temperature=1.0, top_p=0.9, repetition_penalty=1.2, seed=1),
}


def bundled_corpus() -> Path:
    """The ten Machado de Assis novels shipped inside the package."""
    return Path(str(resources.files("centelha") / "corpus" / "machado"))


def run_quickstart(workdir: str | Path, console: Console, max_steps: int | None = None) -> dict:
    started = time.perf_counter()
    workdir = Path(workdir)
    data_dir, run_dir = workdir / "data" / "machado", workdir / "runs" / "quickstart"

    console.rule("1. prepare: text → tokenizer → token shards")
    prepared = prepare([bundled_corpus()], data_dir, vocab_size=4096)
    splits = prepared.meta["splits"]
    console.print(f"{len(prepared.meta['sources'])} novels → byte-level BPE with 4,096 tokens → "
                  f"{splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens "
                  f"in {data_dir}", markup=False)

    console.rule("2. pretrain: next-token prediction on 2 CPU cores")
    if (run_dir / "run.yaml").is_file():
        shutil.rmtree(run_dir)  # a previous quickstart's run: start over
    overrides = {"train.max_steps": max_steps} if max_steps else {}
    result = train(data_dir, run_dir, load_run_config("quickstart", overrides))

    console.rule("3. generate: the same prompt, three decoding strategies")
    llm = load(run_dir)
    for name, settings in STRATEGIES.items():
        text = llm.generate(PROMPT, **settings)
        # model text is never markup: a "[/]" it writes must print as written
        console.print(Panel(Text.assemble((PROMPT, "dim"), text), title=Text(name),
                            title_align="left"))

    baseline = prepared.meta["unigram_val_loss"]
    seconds = time.perf_counter() - started
    console.rule("4. results")
    console.print(f"val loss {result.val_loss:.3f} nats/token (perplexity "
                  f"{math.exp(result.val_loss):.1f}) vs unigram baseline {baseline:.3f} "
                  f"(perplexity {math.exp(baseline):.1f}); {result.params:,} parameters, "
                  f"{result.tokens:,} tokens seen, {seconds:.0f} s in all")
    console.print(f"checkpoint: {run_dir}  (loss curve: {run_dir / 'loss.png'})", markup=False)
    console.print("next: centelha generate " + str(run_dir) +
                  ' --prompt "Era uma vez" --temperature 0.8 --top-p 0.95 --seed 1\n'
                  "      centelha prepare my-texts/ --out data/mine --vocab-size 4096\n"
                  "      centelha train --config tiny --data data/mine --out runs/mine",
                  markup=False)
    return {"val_loss": result.val_loss, "unigram_val_loss": baseline, "seconds": seconds,
            "run_dir": str(run_dir)}
