"""Data-parallel training with PyTorch's own engine, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m mhkd distill ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them into one process group
(NCCL on GPUs, gloo on CPUs). Without those variables everything runs as one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup(device: torch.device | None) -> torch.device | None:
    """Join torchrun's process group if the environment describes one; return the device.

    With GPUs each process takes ``cuda:LOCAL_RANK`` unless a device was given.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all processes (a no-op in a single process)."""
    if world()[1] > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if world()[1] > 1:
        dist.barrier()
