"""Data parallelism under `torchrun`, shared by the compact and the LM trainers: the process group,
summed or averaged gradients, rank 0's weights to everyone, and the check that replicas agree.

One process per rank; each rolls out its own prompts and contributes gradients. With one process
(no `torchrun`) every function here is a no-op, so the trainers call them unconditionally."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Rank 0 writes logs and checkpoints and evaluates."""
        return self.rank == 0


def join() -> World:
    """The world torchrun describes in RANK/WORLD_SIZE, its process group started (gloo on CPU)."""
    world = World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    if world.distributed and not torch.distributed.is_initialized():
        if torch.cuda.is_available():  # one GPU per process; NCCL collectives use the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def device() -> torch.device:
    """Where collectives' tensors live: the process's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def leader_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block alone (it fills a shared cache: an exported encoder, a converted model);
    the others run it after, reading what it wrote. Concurrent writers would race on the same files."""
    if world.distributed and not world.leader:
        torch.distributed.barrier()
    yield
    if world.distributed and world.leader:
        torch.distributed.barrier()


def reduce_gradients(parameters: Iterable[torch.nn.Parameter], world: World, average: bool) -> None:
    """Sum (or average) every gradient over the processes. A parameter with no gradient here may have
    one on another rank (its samples were all dropped here, not there): it joins with zeros, or the
    collective calls would not line up."""
    if not world.distributed:
        return
    for parameter in parameters:
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        torch.distributed.all_reduce(parameter.grad)
        if average:
            parameter.grad /= world.size


def broadcast_weights(module: torch.nn.Module, world: World) -> None:
    """Every rank takes rank 0's weights (after a step only rank 0 ran, such as a warm start)."""
    if not world.distributed:
        return
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


def total(value: float, world: World) -> float:
    """The sum of ``value`` over the processes."""
    if not world.distributed:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device())
    torch.distributed.all_reduce(tensor)
    return float(tensor[0])


def gather(items: list[Any], world: World) -> list[Any]:
    """Every rank's ``items``, concatenated in rank order (small picklable rows only)."""
    if not world.distributed:
        return items
    gathered: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def check_replicas_agree(module: torch.nn.Module, world: World) -> None:
    """Data-parallel replicas must end with the same weights (same start, same reduced steps)."""
    if not world.distributed:
        return
    flat = torch.cat([t.detach().flatten().double().to(device()) for t in module.state_dict().values()])
    gathered = [torch.zeros_like(flat) for _ in range(world.size)]
    torch.distributed.all_gather(gathered, flat)
    spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if spread > 1e-6:
        raise RuntimeError(f"the {world.size} training processes ended with different weights "
                           f"(max difference {spread:.3g}): gradients were not reduced the same way")
    if world.leader:
        print(f"weights identical on all {world.size} processes", flush=True)
