"""Distributed set-up shared by every verb that runs under ``torchrun`` (train, preprocess/extract).

One device rule, :func:`pathalign.devices.resolve_device` (which ``pathalign``'s preflight also checks
before any work), applied here per process:

* ``auto`` / ``cuda``: under torchrun each process takes ``cuda:<LOCAL_RANK>``; alone, the current GPU.
* ``cuda:N``: that GPU, as everywhere. Under torchrun it is accepted only when one process runs on the
  node (``LOCAL_WORLD_SIZE`` 1, e.g. one process per node that should use GPU ``N``); with several
  processes per node every one would land on the same GPU, so it is refused (:class:`DeviceError`)
  instead of being rewritten silently: use ``--device cuda`` (or ``auto``), or choose the GPUs with
  ``CUDA_VISIBLE_DEVICES``.
* ``cpu``: the CPU.

One rule for the backend: NCCL when this process computes on a CUDA device, gloo otherwise. For NCCL
the process's GPU is made the current device (``torch.cuda.set_device``) *before* the process group
starts, so that collectives and object collectives allocate on it rather than on ``cuda:0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import env_ranks, resolve_device

__all__ = ["DistInfo", "env_ranks", "resolve_device", "setup_distributed"]


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


def setup_distributed(device: str | torch.device | None) -> DistInfo:
    """Pick this process's device (:func:`~pathalign.devices.resolve_device`) and, under torchrun, start the
    process group once.

    Args:
        device: the requested device (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    Returns:
        The :class:`DistInfo` of this process; callers use ``info.device``. A CUDA device is made current
        (``torch.cuda.set_device``), before ``init_process_group`` (NCCL) under torchrun.

    Raises:
        DeviceError: see :func:`~pathalign.devices.resolve_device`.

    Example:
        >>> setup_distributed("cpu")  # outside torchrun
        DistInfo(rank=0, world_size=1, local_rank=0, device=device(type='cpu'))
    """
    rank, world, local = env_ranks()
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def teardown_distributed() -> None:
    """End the process group started by :func:`setup_distributed`, all ranks together (a no-op outside torchrun).

    Every rank waits at a barrier first: a rank that exits while another still talks to it (rank 0 exporting
    the model, writing the summary) tears the transport down under it, and gloo then aborts that process
    ("terminate called without an active exception").
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
