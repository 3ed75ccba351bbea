"""Training throughput: centelha's Transformer beside HF `transformers`' GPT-2, same shape.

Both models are built here with the same shape (layers, width, heads, context, vocab),
trained on the same random batches with AdamW, in this one process with the same thread
count, alternating rounds so that neither gets a quieter machine. It prints tokens/s for
each and the ratio. centelha uses its own loop's pieces (fused AdamW where available);
the reference is the plain loop a `transformers` user writes.

    python benchmarks/train_throughput.py [--shape small|gpt2-124m] [--compile] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from centelha.config import ModelConfig
from centelha.model import Transformer, count_parameters, flops_per_token
from centelha.train.config import TrainConfig
from centelha.train.optim import make_optimizer

SHAPES = {
    # what a CPU user trains: 4 layers of 256, context 256, a 4k BPE vocabulary
    "small": dict(n_layer=4, d_model=256, n_head=4, block_size=256, vocab_size=4096, batch=8),
    # GPT-2 small itself (slow on a CPU: a few steps per round)
    "gpt2-124m": dict(n_layer=12, d_model=768, n_head=12, block_size=1024, vocab_size=50257,
                      batch=4),
}


def build_ours(shape: dict, compile_model: bool):
    torch.manual_seed(0)
    cfg = ModelConfig(family="gpt2", vocab_size=shape["vocab_size"], n_layer=shape["n_layer"],
                      d_model=shape["d_model"], n_head=shape["n_head"],
                      block_size=shape["block_size"])
    model = Transformer(cfg).train()
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    forward = torch.compile(model) if compile_model else model
    return model, make_step(model, optimizer, lambda x, y: forward(x, y)[1])


def make_step(model, optimizer, loss_of):
    """One optimizer step, the same for both models: loss, backward, clip, AdamW."""
    def step(x, y):
        loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def build_hf(shape: dict, compile_model: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=shape["vocab_size"], n_positions=shape["block_size"],
                     n_embd=shape["d_model"], n_layer=shape["n_layer"], n_head=shape["n_head"],
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    forward = torch.compile(model) if compile_model else model
    # labels=x: transformers shifts the labels itself
    return model, make_step(model, optimizer, lambda x, y: forward(input_ids=x, labels=x).loss)


def time_steps(step, batches) -> float:
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    shape = SHAPES[args.shape]
    batch, ctx = shape["batch"], shape["block_size"]
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, shape["vocab_size"], (args.steps, batch, ctx + 1), generator=gen)
    batches = [(d[:, :-1], d[:, 1:]) for d in data]
    ours_model, ours = build_ours(shape, args.compile)
    _, hf = build_hf(shape, args.compile)
    for step in (ours, hf):  # warm up (and compile)
        time_steps(step, batches[:2])
    times = {"centelha": [], "transformers": []}
    for _ in range(args.rounds):
        times["centelha"].append(time_steps(ours, batches))
        times["transformers"].append(time_steps(hf, batches))
    tokens = args.steps * batch * ctx
    speed = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    flops = flops_per_token(ours_model.cfg)["train"]
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"shape {args.shape}: {shape}, {count_parameters(ours_model):,} parameters, "
          f"compile={args.compile}")
    for name, value in speed.items():
        print(f"  {name:13s} {value:10,.0f} tokens/s  ({value * flops / 1e9:6.1f} GFLOP/s)")
    print(f"  ratio centelha / transformers: {speed['centelha'] / speed['transformers']:.2f}x")


if __name__ == "__main__":
    main()
