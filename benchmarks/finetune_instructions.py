"""Instruction SFT and then DPO on SmolLM2-135M with LoRA, on centelha's own checkable
instruction set (issue 12's acceptance: exact match per family before and after SFT,
≥ 80% overall in ≤ 20 minutes on 2 CPU cores; then DPO on top, reward accuracy ≥ 90% on
held-out pairs, and more held-out prompts answered in the chosen, exact form).

Stages, each timed:
1. build the set (`centelha.finetune.instructions.build`): train and held-out splits
   that never share an item, and preference pairs from the same items;
2. before: the base model's greedy replies to the held-out prompts (which already say
   "reply with the number only" and the like), exact and lenient reading per family;
3. SFT (`centelha finetune sft`), then the same measure;
4. DPO on the SFT run (`centelha finetune dpo`), with TRL's reward measures on held-out
   pairs, then the same measure. `--stages dpo` reuses the SFT run already in `--out`.

    python benchmarks/finetune_instructions.py [--minutes-sft 20] [--stages sft,dpo]
        [--train-per-family 600] [--eval-per-family 40] [--out runs/bench-instructions]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from finetune_spam import cpu_line

import centelha
from centelha.finetune.instructions import build
from centelha.finetune.instructions.score import InstructionScores, score_instructions
from centelha.finetune.runs import finetune


def table(title: str, scores: InstructionScores) -> list[dict]:
    print(f"\n{title}")
    print(f"{'family':14s} {'n':>4s} {'exact':>7s} {'contains':>9s}")
    rows = []
    for name, s in [*scores.families.items(), ("overall", scores.overall)]:
        print(f"{name:14s} {s.examples:4d} {s.exact_rate:7.1%} {s.contains_rate:9.1%}")
        rows.append({"family": name, "n": s.examples, "exact": s.exact_rate,
                     "contains": s.contains_rate})
    return rows


def measured(model, held_out: Path, per_family: int, title: str,
             replies: Path) -> tuple[list[dict], float]:
    started = time.perf_counter()
    llm = centelha.load(model, max_context=512)
    scores = score_instructions(llm, held_out, per_family)
    replies.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                               for r in scores.replies), encoding="utf-8")
    rows = table(f"{title} ({time.perf_counter() - started:.0f} s to answer)", scores)
    return rows, scores.overall.exact_rate



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="runs/bench-instructions")
    parser.add_argument("--stages", default="before,sft,dpo")
    parser.add_argument("--train-per-family", type=int, default=600)
    parser.add_argument("--eval-per-family", type=int, default=40)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--sft-lr", type=float, default=2e-3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--dpo-batch", type=int, default=4)
    parser.add_argument("--dpo-lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--nll-weight", type=float, default=1.0,
                        help="DPO's added NLL of the chosen answers (0: plain DPO)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    stages = args.stages.split(",")
    out = Path(args.out)
    data = out / "data"
    files = build(data, train_per_family=args.train_per_family,
                  held_out_per_family=max(args.eval_per_family, 40), preference_pairs=True)
    held_out = files["held_out"]
    result: dict = {"machine": cpu_line(), "args": vars(args)}
    print(f"machine: {result['machine']}")
    if "before" in stages:
        result["before"], _ = measured(args.model, held_out, args.eval_per_family,
                                       f"before: {args.model}", out / "replies_before.jsonl")
    if "sft" in stages:
        shutil.rmtree(out / "sft", ignore_errors=True)
        started = time.perf_counter()
        run = finetune("sft", args.model, files["train"], out / "sft", overrides={
            "objective.val_data": str(held_out), "objective.eval_examples": 100,
            "objective.max_length": 256, "train.max_steps": args.sft_steps,
            "train.batch_size": args.sft_batch, "train.lr": args.sft_lr,
            "train.warmup_steps": max(1, args.sft_steps // 20),
            "train.eval_interval": args.sft_steps, "train.ckpt_interval": 0,
            "lora.r": args.lora_r, "lora.alpha": 2 * args.lora_r})
        result["sft_minutes"] = (time.perf_counter() - started) / 60
        print(f"SFT: {run.step} steps in {result['sft_minutes']:.1f} min, held-out loss "
              f"{run.val_loss:.3f}, {run.trainable:,} trained parameters")
        result["after_sft"], _ = measured(out / "sft", held_out, args.eval_per_family,
                                          "after SFT", out / "replies_sft.jsonl")
    if "dpo" in stages:
        shutil.rmtree(out / "dpo", ignore_errors=True)
        started = time.perf_counter()
        run = finetune("dpo", str(out / "sft"), files["preferences_train"], out / "dpo",
                       overrides={
                           "objective.val_data": str(files["preferences_held_out"]),
                           "objective.eval_examples": 200, "objective.beta": args.beta,
                           "objective.nll_weight": args.nll_weight,
                           "objective.max_length": 256, "train.max_steps": args.dpo_steps,
                           "train.batch_size": args.dpo_batch, "train.lr": args.dpo_lr,
                           "train.warmup_steps": max(1, args.dpo_steps // 10),
                           "train.eval_interval": args.dpo_steps, "train.ckpt_interval": 0,
                           "lora.r": 8, "lora.alpha": 16})
        result["dpo_minutes"] = (time.perf_counter() - started) / 60
        result["dpo_metrics"] = run.metrics
        print(f"DPO: {run.step} steps in {result['dpo_minutes']:.1f} min; held-out "
              + ", ".join(f"{k} {v:.3f}" for k, v in run.metrics.items()))
        result["after_dpo"], _ = measured(out / "dpo", held_out, args.eval_per_family,
                                          "after DPO", out / "replies_dpo.jsonl")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
