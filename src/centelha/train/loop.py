"""The training loop, one for every objective (pretraining, classification, instruction
SFT, DPO: `objectives/`), resumable to the bit.

One loop for every device and world size: AdamW (fused where available), warmup + cosine
schedule, gradient accumulation and clipping, bf16 autocast where it pays (GPUs, CPUs
with AMX: `precision.py`), TF32 on CUDA, optional `torch.compile`, periodic evaluation
(the objective's held-out measures), a JSONL log, loss and metric PNGs, atomic
checkpoints (see `checkpoint.py`), and, under torchrun, DDP or FSDP2 across processes
(see `distributed.py`). On a GPU whose peak is known, model FLOPs utilisation (MFU) is
shown and logged.

What depends on the task (batches, the loss as a sum with a count, evaluation, what the
run publishes, the starting weights) is the objective's; everything else is here.

Exact resume is a design goal: the state holds the weights (only the trainable ones when
the base is frozen), the optimizer moments, the step, the global RNG and the data
position (the sampler's generator, and an example objective's place in its epoch), and the
schedule is a function of the step, so N steps == N/2 + resume + N/2, bit for bit on CPU.
Evaluation reads fixed held-out data and draws no random numbers, so it never perturbs
training.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from centelha.checkpoint import (
    STATE_DIR,
    atomic_write_text,
    clean_partial_states,
    latest_state,
    load_training_state,
    save_training_state,
)
from centelha.errors import CentelhaError
from centelha.model import count_parameters, flops_per_token
from centelha.objectives import make_objective
from centelha.objectives.start import trainable_count
from centelha.precision import autocast, resolve_precision
from centelha.train.accumulate import accumulate_gradients
from centelha.train.config import RunConfig, load_run_config
from centelha.train.distributed import (
    World,
    full_weights,
    join,
    leave,
    load_full,
    load_sharded,
    micro_step_context,
    save_sharded,
    wrap,
)
from centelha.train.optim import learning_rate, make_optimizer, param_names
from centelha.train.plot import plot_loss, plot_metrics

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
    metrics: dict = field(default_factory=dict)  # the last evaluation's measures
    trainable: int = 0  # parameters that trained

    @property
    def val_perplexity(self) -> float | None:
        return None if self.val_loss is None else math.exp(self.val_loss)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CentelhaError(f"train.device is {name!r} but no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CentelhaError(f"train.device is {name!r} but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CentelhaError("train.device is 'mps' but no Apple GPU (MPS) is available")
    return device


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


# Dense bf16 peak FLOP/s of GPUs, by a part of their name, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
              "A10G": 70e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for part, flops in PEAK_FLOPS.items() if part in name), None)


class Run:
    """Everything one training run holds: model, optimizer, data, RNG, log."""

    def __init__(self, run_cfg: RunConfig, data: Path, run_dir: Path,
                 world: World | None = None):
        self.world = world = world or World()
        self.cfg = run_cfg.train
        self.run_cfg = run_cfg
        self.data = data
        self.run_dir = run_dir
        self.device = pick_device(self.cfg.device)
        if self.device.type == "cuda":
            if world.distributed:
                self.device = torch.device("cuda", world.local_rank)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.precision, self.precision_reason = resolve_precision(self.cfg.precision,
                                                                  self.device)
        torch.manual_seed(self.cfg.seed)
        self.sampler = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.objective = make_objective(run_cfg, data, self.sampler)
        self.tokenizer = self.objective.tokenizer
        self.model_cfg = self.objective.body.cfg
        self.model = self.objective.model.to(self.device)
        self.param_names = param_names(self.model)
        self.wrapped = wrap(self.model, world, self.device)  # DDP, FSDP, or the model itself
        self.optimizer = make_optimizer(self.model, self.cfg, self.device,
                                        fused=not world.sharded)
        self.step = 0
        self.forward = torch.compile(self.wrapped) if self.cfg.compile else self.wrapped
        self.log_path = run_dir / LOG_FILE
        self.peak = peak_flops(self.device)

    def autocast(self):
        return autocast(self.precision, self.device)

    # -- state --------------------------------------------------------------------------
    def save(self) -> None:
        """Write the training state (every rank takes part; rank 0 writes the files)."""
        world = self.world
        tensors = {"rng.torch": torch.get_rng_state(), "rng.sampler": self.sampler.get_state(),
                   **self.objective.position()}
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        info = {"data": str(self.data), "world_size": world.size,
                "batch_size": self.cfg.batch_size,
                "strategy": world.strategy if world.distributed else "single"}
        body, publish = self.objective.body, self.objective.publish
        if world.sharded:
            weights = full_weights(self.wrapped, world)  # the single-file model, gathered
            if self.objective.frozen_base:
                weights = {k: v for k, v in weights.items() if k in self.trainable_names()}
            shards = self.run_dir / STATE_DIR / f".tmp-sharded-{self.step:07d}"
            if world.main:
                shutil.rmtree(shards, ignore_errors=True)
                shards.mkdir(parents=True)
            world.barrier()
            save_sharded(self.wrapped, self.optimizer, shards)
            world.barrier()
            if world.main:
                save_training_state(self.run_dir, self.step, body, None, self.tokenizer,
                                    tensors, info, weights=weights, sharded=shards,
                                    publish=publish)
        elif world.main:
            save_training_state(self.run_dir, self.step, body, self.optimizer,
                                self.tokenizer, tensors, info,
                                weights=self.objective.state_tensors(), publish=publish)
        world.barrier()

    def restore(self, state_dir: Path) -> None:
        """Continue from a state written by any strategy and world size."""
        weights, optimizer, info = load_training_state(state_dir)
        if info["sharded"] is not None:
            load_sharded(self.wrapped, self.optimizer, info["sharded"])
        else:
            partial = self.objective.frozen_base
            if not partial and self.model_cfg.tie_embeddings:
                for name in self.model.state_dict():
                    if name.endswith("lm_head.weight") and name not in weights:
                        weights[name] = weights[name.removesuffix("lm_head.weight")
                                                + "tok_emb.weight"]
            load_full(self.wrapped, self.optimizer, self.world, weights, optimizer,
                      self.param_names, strict=not partial)
        self.step = info["step"]
        self.keep_global_batch(info.get("batch_size", self.cfg.batch_size),
                               info.get("world_size", 1))
        tensors = info["tensors"]
        torch.set_rng_state(tensors["rng.torch"])
        self.sampler.set_state(tensors["rng.sampler"])
        self.objective.set_position(tensors)
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        if self.world.main:
            rows = read_log(self.log_path, up_to_step=self.step)
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in rows))
        self.world.barrier()

    def keep_global_batch(self, batch_size: int, world_size: int) -> None:
        """A run resumed on a different number of ranks keeps its global batch (and so its
        data order and loss curve): each rank's share is resized."""
        sequences = batch_size * world_size
        if sequences % self.world.size:
            raise CentelhaError(f"this run's global batch of {sequences} sequences per "
                                f"micro-step cannot be split over {self.world.size} ranks")
        self.cfg.batch_size = sequences // self.world.size

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if p.requires_grad}

    def log(self, row: dict) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # -- one optimizer step -------------------------------------------------------------
    def train_step(self) -> tuple[float, int]:
        """One optimizer step; (its mean loss, the tokens it fed the model on all ranks)."""
        lr = learning_rate(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        world = self.world
        # every rank draws each global micro-batch and keeps its own rows of it
        batches = [self.objective.draw(self.cfg.batch_size * world.size,
                                       world.rows(self.cfg.batch_size))
                   for _ in range(self.cfg.grad_accum)]
        loss = accumulate_gradients(self.objective, self.forward, batches, world, self.device,
                                    self.autocast,
                                    lambda last: micro_step_context(self.wrapped, world, last))
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = sum(self.objective.tokens(b) for b in batches)
        return loss, int(world.sum(tokens, self.device))

    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.objective.evaluate(self.forward, self.cfg.batch_size, self.device,
                                           self.autocast, self.world)
        finally:
            self.model.train(was_training)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
        TextColumn("{task.fields[speed]} tok/s"), TextColumn("{task.fields[mfu]}"),
        TimeRemainingColumn(), disable=not enabled,
    )


def train(data_dir: str | Path | None, out: str | Path, run_cfg: RunConfig | None = None,
          resume: bool = False, stop_after: int | None = None, show_progress: bool = True,
          on_eval: Callable[[int, float], None] | None = None,
          strategy: str = "ddp") -> TrainResult:
    """Train (or, with `resume`, continue) the run in `out`; returns the final losses.

    `stop_after` ends this invocation after that many total steps, checkpointed, without
    changing the schedule (the run can be resumed to `max_steps` later).

    Under torchrun every process calls this; `strategy` (ddp or fsdp) says how they share
    the work. Started plainly, it is one process and `strategy` does not matter.
    """
    threads = torch.get_num_threads()
    config = _resume_config(Path(out))[0] if resume else run_cfg
    # the backend follows the device: NCCL for CUDA, gloo for the CPU
    world = join(strategy, pick_device(config.train.device) if config else None)
    try:
        return _train(data_dir, Path(out), run_cfg, resume, stop_after, show_progress, on_eval,
                      world)
    except (RuntimeError, torch.distributed.DistError) as e:
        if not world.distributed:
            raise
        raise CentelhaError(f"rank {world.rank}: the process group failed, most likely "
                            f"because another rank died ({str(e).splitlines()[0][:200]})") \
            from None
    finally:
        torch.set_num_threads(threads)  # `train.threads` must not outlive the run
        leave(world)


def _train(data_dir, run_dir: Path, run_cfg, resume, stop_after, show_progress,
           on_eval, world: World) -> TrainResult:
    if resume:
        run_cfg, data_dir = _resume_config(run_dir)
    else:
        if run_cfg is None or data_dir is None:
            raise CentelhaError("train needs a config and a prepared data folder")
        if latest_state(run_dir) is not None:
            raise CentelhaError(f"{run_dir} already holds a run; use --resume to continue it, "
                                "or pick another --out")
        world.barrier()  # every rank has looked before rank 0 writes
        if world.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / LOG_FILE).unlink(missing_ok=True)
            record = {"data": str(Path(data_dir).resolve()), **_portable(run_cfg.to_dict())}
            atomic_write_text(run_dir / RUN_FILE, yaml.safe_dump(record, sort_keys=False))
        world.barrier()
    run = Run(run_cfg, Path(data_dir), run_dir, world)
    if resume:
        if world.main:
            clean_partial_states(run_dir)
        world.barrier()
        state = latest_state(run_dir)
        if state is not None:
            run.restore(state)
    cfg = run.cfg
    end = min(cfg.max_steps, stop_after) if stop_after else cfg.max_steps
    sequences = cfg.batch_size * cfg.grad_accum * world.size
    train_flops = flops_per_token(run.model_cfg)["train"]
    loss, metrics = float("nan"), {}
    started, seen = time.perf_counter(), 0
    run.model.train()
    show = show_progress and world.main
    with _progress(show) as progress:
        if show:
            progress.console.print(_start_line(run, sequences))
        task = progress.add_task("train", total=cfg.max_steps, completed=run.step,
                                 loss="…", val="…", speed="…", mfu="")
        window_start, window_tokens = time.perf_counter(), 0
        while run.step < end:
            loss, tokens = run.train_step()
            seen += tokens
            window_tokens += tokens
            done = run.step == end
            logging = run.step % cfg.log_interval == 0 or done
            # every rank collects (and so clears) the objective's measures of the interval
            step_metrics = run.objective.step_metrics() if logging else {}
            if logging and world.main:
                seconds = max(1e-9, time.perf_counter() - window_start)
                speed = window_tokens / seconds
                row = {"step": run.step, "loss": loss, "lr": learning_rate(run.step - 1, cfg),
                       "tokens_per_s": round(speed, 1), **step_metrics}
                mfu = ""
                if run.peak:
                    row["mfu"] = train_flops * speed / (run.peak * world.size)
                    mfu = f"MFU {100 * row['mfu']:.1f}%"
                run.log(row)
                progress.update(task, loss=f"{loss:.3f}", speed=f"{speed:,.0f}", mfu=mfu)
                window_start, window_tokens = time.perf_counter(), 0
            if run.step % cfg.eval_interval == 0 or done:
                metrics = run.evaluate()
                if world.main:
                    run.log({"step": run.step, **metrics})
                    progress.update(task, val=_shown_metrics(metrics))
                    rows = read_log(run.log_path)
                    plot_loss(rows, run_dir / "loss.png", run.objective.baseline)
                    plot_metrics(rows, run_dir / "metrics.png")
                    if on_eval:
                        on_eval(run.step, metrics["val_loss"])
            if (cfg.ckpt_interval and run.step % cfg.ckpt_interval == 0) or done:
                run.save()
            progress.update(task, completed=run.step)
    if not metrics and run.step > 0:
        metrics = run.evaluate()
    trainable, _ = trainable_count(run.model)
    return TrainResult(run_dir, run.step, loss, metrics.get("val_loss"), seen,
                       time.perf_counter() - started, count_parameters(run.model), metrics,
                       trainable)


def _start_line(run: Run, sequences: int) -> str:
    cfg, world = run.cfg, run.world
    trainable, total = trainable_count(run.model)
    return (f"{run.objective.describe()}\n"
            f"global batch {sequences} sequences = {cfg.batch_size} × {cfg.grad_accum} "
            f"accumulation × {world.size} rank(s)"
            + (f" ({world.strategy})" if world.distributed else "")
            + f"; training {trainable:,} of {total:,} parameters"
            + f"; precision {run.precision} ({run.precision_reason})")


def _shown_metrics(metrics: dict[str, float]) -> str:
    """The validation loss, and the objective's headline measure where it has one."""
    text = f"{metrics['val_loss']:.3f}"
    for key, label in (("val_accuracy", "acc"), ("eval_rewards/accuracies", "reward acc")):
        if key in metrics:
            text += f" {label} {metrics[key]:.3f}"
    return text


def _portable(record: dict) -> dict:
    """The config as run.yaml keeps it: file paths made absolute, so `--resume` works from
    any folder (a registry name stays a name)."""
    for section, key in (("objective", "val_data"), ("train", "init_from")):
        value = record[section].get(key)
        if value and Path(value).expanduser().exists():
            record[section][key] = str(Path(value).expanduser().resolve())
    return record


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
