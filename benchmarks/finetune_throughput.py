"""LoRA SFT training speed on SmolLM2-135M: centelha beside Hugging Face `transformers` +
`peft`, same sequences, rank, targets, threads and precision, as a ratio in one run, with
each side's peak memory (issue 12's target: ≥ 1.5×).

Both sides train LoRA r=16 (alpha 32) adapters on every attention and MLP projection
(ours: the fused qkv and gate/up matrices; PEFT: q, k, v, o, gate, up, down) with AdamW,
on the same batches of instruction conversations (the checkable set, padded per batch,
loss on the assistant tokens), and the loss is computed the same way (our `nll_sum` on
each side's logits; ours at the scored positions only, as the SFT objective does, since
the LM head's output elsewhere is never used). Each side runs in its own process so that
its peak resident memory is its own; a step is forward + backward + optimizer step, timed
after two warm-up steps.

    python benchmarks/finetune_throughput.py [--steps 8] [--batch 8] [--precision fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batches(tokenizer, count: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from centelha.finetune.instructions import examples
    from centelha.finetune.sft_data import assistant_mask, collate, to_example

    items = examples("train", (count * size) // 5 + 1, seed=3)[:count * size]
    made = [to_example(*assistant_mask(tokenizer, r["messages"]), "bench") for r in items]
    return [collate(made[i * size:(i + 1) * size]) for i in range(count)]


def ours(precision: str, data: list, r: int):
    from centelha.loading import load_model
    from centelha.lora import apply_lora, lora_parameters
    from centelha.objectives.language import next_token_loss

    model, _, _ = load_model("smollm2-135m-instruct")
    apply_lora(model, r=r, alpha=2 * r)
    model.train()
    # the SFT objective's own loss: logits only at the scored (assistant) positions
    return model, lora_parameters(model), lambda ids, targets: next_token_loss(
        model, {"ids": ids, "targets": targets})


def theirs(precision: str, data: list, r: int, hf_folder: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from centelha.evaluate import nll_sum

    model = AutoModelForCausalLM.from_pretrained(hf_folder, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                             target_modules=HF_TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, lambda ids, targets: nll_sum(model(input_ids=ids).logits, targets)


def side(args) -> dict:
    """One side's measurement, in this process."""
    from centelha.loading import load_model

    torch.set_num_threads(args.threads)
    _, tokenizer, _ = load_model("smollm2-135m-instruct")
    data = batches(tokenizer, args.steps + 2, args.batch)
    if args.side == "ours":
        model, params, loss_sum = ours(args.precision_one, data, args.r)
    else:
        model, params, loss_sum = theirs(args.precision_one, data, args.r, args.hf_folder)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    dtype = torch.bfloat16 if args.precision_one == "bf16" else None
    seconds, tokens = 0.0, 0
    for i, (ids, targets) in enumerate(data):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = loss_sum(ids, targets) / (targets != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            seconds += time.perf_counter() - started
            tokens += ids.numel()
    trainable = sum(p.numel() for p in params)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tok_s": tokens / seconds, "peak_mib": peak, "trainable": trainable,
            "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--precision-one", help=argparse.SUPPRESS)
    parser.add_argument("--hf-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args)))
        return
    from finetune_spam import cpu_line

    from centelha.formats.hf.folder import save_hf
    from centelha.loading import load_model

    print(f"machine: {cpu_line()}; batch {args.batch} conversations, r {args.r}, "
          f"{args.steps} timed steps")
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, _ = load_model("smollm2-135m-instruct")
        save_hf(model, tokenizer, Path(tmp) / "hf")  # the same weights for transformers
        del model
        rows = []
        for precision in args.precision.split(","):
            measured = {}
            for who in ("ours", "theirs"):
                command = [sys.executable, __file__, "--side", who, "--precision-one",
                           precision, "--hf-folder", str(Path(tmp) / "hf"), "--steps",
                           str(args.steps), "--batch", str(args.batch), "--r", str(args.r),
                           "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
                if done.returncode:
                    raise SystemExit(done.stderr[-2000:])
                measured[who] = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = measured["ours"]["tok_s"] / measured["theirs"]["tok_s"]
            rows.append({"precision": precision, **{f"{w}_{k}": v for w in measured
                                                     for k, v in measured[w].items()},
                         "ratio": ratio})
            print(f"{precision}: centelha {measured['ours']['tok_s']:.0f} tok/s "
                  f"(peak {measured['ours']['peak_mib']:.0f} MiB, "
                  f"{measured['ours']['trainable']:,} trained), transformers+peft "
                  f"{measured['theirs']['tok_s']:.0f} tok/s (peak "
                  f"{measured['theirs']['peak_mib']:.0f} MiB, "
                  f"{measured['theirs']['trainable']:,} trained): {ratio:.2f}×")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
