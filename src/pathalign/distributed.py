"""Distributed set-up shared by every verb that runs under ``torchrun`` (train, preprocess/extract).

One rule for the backend: NCCL when this process computes on a CUDA device, gloo otherwise.
Under torchrun each process uses ``cuda:<LOCAL_RANK>`` when the requested device is CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_ranks() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from torchrun's environment (``(0, 1, 0)`` outside it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_distributed(device: str | torch.device) -> DistInfo:
    """Initialise the process group when launched by torchrun (once) and pick this process's device.

    Args:
        device: the requested device (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``); under torchrun a CUDA
            request becomes ``cuda:<LOCAL_RANK>``.

    Returns:
        The :class:`DistInfo` of this process. Nothing is mutated: callers use ``info.device``.

    Example:
        >>> setup_distributed("cpu")  # outside torchrun
        DistInfo(rank=0, world_size=1, local_rank=0, device=device(type='cpu'))
    """
    rank, world, local = env_ranks()
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", local)
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)
