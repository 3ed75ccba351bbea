"""Training on many processes with PyTorch's own distributed engine (torchrun, DDP, FSDP2).

`centelha train` started by `torchrun` finds RANK/WORLD_SIZE/LOCAL_RANK in its environment
and joins the process group (gloo on CPU, NCCL on CUDA); started plainly it is a world of
one and nothing here does anything. The same config runs on one CPU, one GPU or many.

Design choices a reader should know:
- The global batch is `batch_size × grad_accum × world size`. Every rank draws the same
  random windows for a micro-step (the sampler's generator is seeded alike and consumed
  alike on every rank) and reads only its own slice of them, so a run on N ranks follows
  the same data as one process with an N times larger `batch_size`: its loss curve matches
  that run's, step for step (tests/test_distributed.py checks 1e-4).
- `ddp` wraps the model in DistributedDataParallel and skips the gradient all-reduce
  (`no_sync`) on all but the last micro-step. `fsdp` shards every transformer block and
  then the root with `fully_shard` (FSDP2), in bf16 with fp32 reductions on CUDA.
- Checkpoints: with `ddp` (replicas) rank 0 writes the usual files; with `fsdp` every rank
  writes its shards through `torch.distributed.checkpoint` (`state/step_N/sharded/`) and
  rank 0 adds the single-file model for inference. Any state resumes under any strategy and
  world size: sharded ones are resharded by DCP, full ones are read by every rank.
- Only rank 0 logs, plots and writes files; all ranks evaluate (an FSDP forward is
  collective) on the same windows.
- Collectives time out (`CENTELHA_DIST_TIMEOUT`, seconds, default 300), so a rank that dies
  ends the run with an error rather than a hang; torchrun then stops the others.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from centelha.errors import CentelhaError

STRATEGIES = ("ddp", "fsdp")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1 or dist.is_initialized()

    @property
    def sharded(self) -> bool:
        return self.distributed and self.strategy == "fsdp"

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a micro-step's global batch of batch_size × size rows."""
        return slice(self.rank * batch_size, (self.rank + 1) * batch_size)

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of `value` over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of `value` over the ranks."""
        return self.sum(value, device) / self.size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def join(strategy: str = "ddp", device: torch.device | None = None) -> World:
    """Join torchrun's process group when started by torchrun; a world of one otherwise."""
    if strategy not in STRATEGIES:
        raise CentelhaError(f"--strategy must be one of {', '.join(STRATEGIES)}, not "
                            f"{strategy!r}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World(strategy=strategy)
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_RANK", 0)), strategy)
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(world.local_rank)
        timeout = timedelta(seconds=float(os.environ.get("CENTELHA_DIST_TIMEOUT", 300)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return world


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model as the strategy trains it (unchanged in a world of one)."""
    if not world.distributed:
        return model
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    from centelha.model import Block

    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def micro_step_context(model: nn.Module, world: World, last: bool):
    """Gradient sync only on the last micro-step of an accumulation."""
    if world.distributed and world.strategy == "ddp" and not last:
        return model.no_sync()
    if world.sharded and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


# -- checkpoints ---------------------------------------------------------------------------------
def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every rank writes its shards of the weights and the optimizer state (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Read a sharded state into `model` and `optimizer`, whatever their strategy and world
    size now (DCP reads each rank's part; a world of one reads everything)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def full_weights(model: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """The whole model's tensors on the CPU (gathered from the shards under FSDP: a
    collective; rank 0 gets them, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if world.sharded:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    inner = model.module if hasattr(model, "module") else model
    return inner.state_dict()


def load_full(model: nn.Module, optimizer: torch.optim.Optimizer, world: World,
              weights: dict[str, torch.Tensor], optim_state: dict, names: list[str],
              strict: bool = True) -> None:
    """Load a full (unsharded) state: `optim_state` as `optimizer.state_dict()` of one
    process, its parameters numbered in the order of `names`. `strict=False`: `weights`
    holds only the trainable tensors (a frozen base), each of which must exist."""
    if not world.sharded:
        inner = model.module if hasattr(model, "module") else model
        unexpected = inner.load_state_dict(weights, strict=strict).unexpected_keys
        if unexpected:
            raise CentelhaError(f"the saved state holds {unexpected[0]}, which this model "
                                "does not have")
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    by_name = {"state": {names[int(i)]: v for i, v in optim_state["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                for g in optim_state["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=by_name,
                   options=StateDictOptions(full_state_dict=True, strict=strict))
