"""The training loop: pretraining by next-token prediction, resumable to the bit.

One loop for every device: AdamW (fused where available), warmup + cosine schedule,
gradient accumulation and clipping, bf16 autocast on CUDA, optional `torch.compile`,
periodic evaluation (loss and perplexity on the val split), a JSONL log, a loss-curve
PNG and atomic checkpoints (see `checkpoint.py`).

Exact resume is a design goal: the state holds the weights, the optimizer moments, the
step, the global RNG and the data sampler's generator (the "data position"), and the
schedule is a function of the step, so N steps == N/2 + resume + N/2, bit for bit on CPU.
Evaluation reads fixed windows and draws no random numbers, so it never perturbs training.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from centelha.checkpoint import (
    atomic_write_text,
    clean_partial_states,
    latest_state,
    load_training_state,
    save_training_state,
)
from centelha.config import ModelConfig
from centelha.data import TokenWindows, load_meta
from centelha.errors import CentelhaError
from centelha.model import Transformer, count_parameters
from centelha.tokenizer import Tokenizer
from centelha.train.config import RunConfig, load_run_config
from centelha.train.optim import learning_rate, make_optimizer
from centelha.train.plot import plot_loss

RUN_FILE = "run.yaml"
LOG_FILE = "log.jsonl"


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss: float | None
    tokens: int
    seconds: float
    params: int

    @property
    def val_perplexity(self) -> float | None:
        return None if self.val_loss is None else math.exp(self.val_loss)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CentelhaError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: TokenWindows, batch_size: int,
                  max_batches: int, device: torch.device, autocast) -> float:
    """Mean next-token cross-entropy over the first `max_batches` val windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in windows.sequential(batch_size, max_batches):
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / max(1, count)


def read_log(path: Path, up_to_step: int | None = None) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if up_to_step is None or row.get("step", 0) <= up_to_step:
            rows.append(row)
    return rows


class Run:
    """Everything one training run holds: model, optimizer, data, RNG, log."""

    def __init__(self, run_cfg: RunConfig, data_dir: Path, run_dir: Path):
        self.cfg = run_cfg.train
        self.run_cfg = run_cfg
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.meta = load_meta(data_dir)
        self.tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
        model_values = {"vocab_size": self.tokenizer.vocab_size, **run_cfg.model}
        self.model_cfg = ModelConfig.from_dict(model_values)
        if self.model_cfg.vocab_size < self.tokenizer.vocab_size:
            raise CentelhaError(f"model.vocab_size ({self.model_cfg.vocab_size}) is smaller than "
                                f"the tokenizer's ({self.tokenizer.vocab_size})")
        self.device = pick_device(self.cfg.device)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(self.cfg.seed)
        self.model = Transformer(self.model_cfg).to(self.device)
        self.train_data = TokenWindows(data_dir, "train", self.model_cfg.block_size)
        self.val_data = TokenWindows(data_dir, "val", self.model_cfg.block_size)
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.sampler = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.step = 0
        self.forward = torch.compile(self.model) if self.cfg.compile else self.model
        self.log_path = run_dir / LOG_FILE

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- state --------------------------------------------------------------------------
    def save(self) -> None:
        tensors = {"rng.torch": torch.get_rng_state(), "rng.sampler": self.sampler.get_state()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        save_training_state(self.run_dir, self.step, self.model, self.optimizer, self.tokenizer,
                            tensors, {"data_dir": str(self.data_dir)})

    def restore(self, state_dir: Path) -> None:
        weights, optimizer, info = load_training_state(state_dir)
        if self.model_cfg.tie_embeddings:
            weights["lm_head.weight"] = weights["tok_emb.weight"]
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        self.step = info["step"]
        tensors = info["tensors"]
        torch.set_rng_state(tensors["rng.torch"])
        self.sampler.set_state(tensors["rng.sampler"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        rows = read_log(self.log_path, up_to_step=self.step)
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, row: dict) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # -- one optimizer step -------------------------------------------------------------
    def train_step(self) -> float:
        lr = learning_rate(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(self.cfg.grad_accum):
            x, y = self.train_data.sample(self.cfg.batch_size, self.sampler)
            with self.autocast():
                _, loss = self.forward(x.to(self.device), y.to(self.device))
            (loss / self.cfg.grad_accum).backward()
            total += loss.item()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / self.cfg.grad_accum

    def evaluate(self) -> float:
        return evaluate_loss(self.forward, self.val_data, self.cfg.batch_size,
                             self.cfg.eval_batches, self.device, self.autocast)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[speed]} tok/s"), TimeRemainingColumn(),
        disable=not enabled,
    )


def train(data_dir: str | Path | None, out: str | Path, run_cfg: RunConfig | None = None,
          resume: bool = False, stop_after: int | None = None, show_progress: bool = True,
          on_eval: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train (or, with `resume`, continue) the run in `out`; returns the final losses.

    `stop_after` ends this invocation after that many total steps, checkpointed, without
    changing the schedule (the run can be resumed to `max_steps` later).
    """
    threads = torch.get_num_threads()
    try:
        return _train(data_dir, Path(out), run_cfg, resume, stop_after, show_progress, on_eval)
    finally:
        torch.set_num_threads(threads)  # `train.threads` must not outlive the run


def _train(data_dir, run_dir: Path, run_cfg, resume, stop_after, show_progress,
           on_eval) -> TrainResult:
    if resume:
        run_cfg, data_dir = _resume_config(run_dir)
    else:
        if run_cfg is None or data_dir is None:
            raise CentelhaError("train needs a config and a prepared data folder")
        if latest_state(run_dir) is not None:
            raise CentelhaError(f"{run_dir} already holds a run; use --resume to continue it, "
                                "or pick another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LOG_FILE).unlink(missing_ok=True)
        record = {"data": str(Path(data_dir).resolve()), **run_cfg.to_dict()}
        atomic_write_text(run_dir / RUN_FILE, yaml.safe_dump(record, sort_keys=False))
    run = Run(run_cfg, Path(data_dir), run_dir)
    if resume:
        clean_partial_states(run_dir)
        state = latest_state(run_dir)
        if state is not None:
            run.restore(state)
    cfg = run.cfg
    end = min(cfg.max_steps, stop_after) if stop_after else cfg.max_steps
    baseline = run.meta.get("unigram_val_loss")
    tokens_per_step = cfg.batch_size * cfg.grad_accum * run.model_cfg.block_size
    loss, val_loss = float("nan"), None
    started, seen = time.perf_counter(), 0
    run.model.train()
    with _progress(show_progress) as progress:
        task = progress.add_task("train", total=cfg.max_steps, completed=run.step,
                                 loss="…", val="…", speed="…")
        window_start, window_tokens = time.perf_counter(), 0
        while run.step < end:
            loss = run.train_step()
            seen += tokens_per_step
            window_tokens += tokens_per_step
            done = run.step == end
            if run.step % cfg.log_interval == 0 or done:
                speed = window_tokens / max(1e-9, time.perf_counter() - window_start)
                run.log({"step": run.step, "loss": loss, "lr": learning_rate(run.step - 1, cfg),
                         "tokens_per_s": round(speed, 1)})
                progress.update(task, loss=f"{loss:.3f}", speed=f"{speed:,.0f}")
                window_start, window_tokens = time.perf_counter(), 0
            if run.step % cfg.eval_interval == 0 or done:
                val_loss = run.evaluate()
                run.log({"step": run.step, "val_loss": val_loss, "val_ppl": math.exp(val_loss)})
                progress.update(task, val=f"{val_loss:.3f}")
                plot_loss(read_log(run.log_path), run_dir / "loss.png", baseline)
                if on_eval:
                    on_eval(run.step, val_loss)
            if (cfg.ckpt_interval and run.step % cfg.ckpt_interval == 0) or done:
                run.save()
            progress.update(task, completed=run.step)
    if val_loss is None and run.step > 0:
        val_loss = run.evaluate()
    return TrainResult(run_dir, run.step, loss, val_loss, seen,
                       time.perf_counter() - started, count_parameters(run.model))


def _resume_config(run_dir: Path) -> tuple[RunConfig, Path]:
    record_path = run_dir / RUN_FILE
    if not record_path.is_file():
        raise CentelhaError(f"nothing to resume in {run_dir}: no {RUN_FILE} "
                            "(start a run with --config and --data)")
    try:
        record = yaml.safe_load(record_path.read_text())
        data_dir = Path(record.pop("data"))
    except (yaml.YAMLError, AttributeError, KeyError):
        raise CentelhaError(f"{record_path} is damaged") from None
    return load_run_config(base=record), data_dir
