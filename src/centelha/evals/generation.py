"""Generation tasks: prompts the model answers, scored against references.

A task file is JSON Lines, one example per line: `"prompt"` (a plain text, continued as
it is) or `"messages"` (a chat, through the model's template), and `"reference"` (a
string) or `"references"` (a list of strings); an optional `"id"`. Every problem is
reported with the line it is on, and a file with no examples is an error, never a score
of zero.

The examples are decoded together through the engine (continuous batching, so a long
answer does not hold up the rest), greedy unless the settings say otherwise; stop
strings cut the text as they do in `generate`. `evaluate_generation` returns the corpus
scores and every example's output and scores, and with `out` writes them beside each
other (`outputs.jsonl`, `scores.json`), so a number can always be traced to the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from centelha.atomic import atomic_write_text
from centelha.data import read_text
from centelha.engine import Engine, Request
from centelha.errors import CentelhaError
from centelha.evals.text_metrics import METRICS, score_outputs
from centelha.generate import stream_text
from centelha.jsonfile import json_lines
from centelha.sampling import SamplingConfig


@dataclass
class Example:
    id: str
    prompt: str | list[dict]      # a text, or chat messages
    references: list[str]


def _references(where: str, record: dict) -> list[str]:
    if ("reference" in record) == ("references" in record):
        raise CentelhaError(f"{where}: give \"reference\" (a string) or \"references\" "
                            "(a list of strings), one of the two")
    refs = [record["reference"]] if "reference" in record else record["references"]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise CentelhaError(f"{where}: the references must be a non-empty list of strings")
    return refs


def _prompt(where: str, record: dict) -> str | list[dict]:
    if ("prompt" in record) == ("messages" in record):
        raise CentelhaError(f"{where}: give \"prompt\" (a text) or \"messages\" (a chat), "
                            "one of the two")
    if "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"]:
            raise CentelhaError(f"{where}: \"prompt\" must be a non-empty string")
        return record["prompt"]
    messages = record["messages"]
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                       and isinstance(m.get("content"), str) for m in messages)):
        raise CentelhaError(f"{where}: \"messages\" must be a list of "
                            "{\"role\": ..., \"content\": ...} objects with string values")
    return messages


def read_generation_task(path: str | Path) -> list[Example]:
    path = Path(path)
    examples = []
    for number, record in json_lines(path, read_text(path)):
        where = f"{path}:{number}"
        examples.append(Example(str(record.get("id", number)), _prompt(where, record),
                                _references(where, record)))
    if not examples:
        raise CentelhaError(f"{path}: no examples (an empty task has no score)")
    return examples


def generate_outputs(llm, prompts: list[str | list[dict]], sampling: SamplingConfig,
                     batch: int = 8) -> list[str]:
    """`llm`'s text for each prompt, decoded together `batch` rows at a time."""
    stops = frozenset(llm.tokenizer.stop_ids)
    engine = Engine(llm.model, max_batch=batch, max_len=llm.max_context,
                    vocab_size=llm.tokenizer.vocab_size)
    requests = [Request(llm.prompt_ids(p), sampling, stops) for p in prompts]
    for number, request in enumerate(requests, start=1):
        try:  # a prompt too long for the context fails before any work, by its number
            engine.check(request)
        except CentelhaError as e:
            raise CentelhaError(f"example {number}: {e}") from None
    outputs = engine.generate_batch(requests)
    return ["".join(stream_text(llm.tokenizer, (t for t in ids if t not in stops),
                                sampling.stop)).strip() for ids in outputs]


@dataclass
class GenerationReport:
    scores: dict
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"scores": self.scores, "examples": len(self.examples)}


def evaluate_generation(llm, task: str | Path, metrics: tuple[str, ...] = METRICS,
                        sampling: SamplingConfig | None = None, batch: int = 8,
                        limit: int | None = None, out: Path | None = None
                        ) -> GenerationReport:
    """Answer the task's prompts with `llm` (a `centelha.LLM`) and score the answers."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise CentelhaError(f"metrics must be some of {', '.join(METRICS)}, not "
                            f"{','.join(unknown) or 'none'}")
    examples = read_generation_task(task)[:limit]
    sampling = sampling or SamplingConfig(temperature=0.0, max_new_tokens=128)
    outputs = generate_outputs(llm, [e.prompt for e in examples], sampling, batch)
    corpus, per_example = score_outputs(outputs, [e.references for e in examples], metrics)
    rows = [{"id": e.id, "prompt": e.prompt, "output": o, "references": e.references, **s}
            for e, o, s in zip(examples, outputs, per_example, strict=True)]
    report = GenerationReport(corpus, rows)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "outputs.jsonl", "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        atomic_write_text(out / "scores.json", json.dumps(
            {"task": str(task), "metrics": list(metrics), "scores": corpus,
             "examples": len(rows)}, indent=2, ensure_ascii=False) + "\n")
    return report
