"""One rule for turning a ``--device`` value into a :class:`torch.device`, checked before any work.

:func:`resolve_device` is the only place a device spec is read: ``pathalign``'s preflight checks every
verb's ``--device`` with it, each verb resolves its device with it, and under torchrun
:func:`pathalign.distributed.setup_distributed` applies it per process. ``--device cuda`` on a machine
without a GPU is one clear error (exit 2), not a traceback after minutes of reading slides.
torch is imported when a device is resolved, not with this module (``pathalign VERB --help`` stays light).
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from .errors import PathalignError

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceError", "resolve_device", "env_ranks", "DEVICE_HELP"]

DEVICE_HELP = "auto (GPU if there is one), cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(PathalignError):
    """A ``--device`` value that is malformed or names hardware this machine does not have."""


def env_ranks() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` from torchrun's environment (``(0, 1, 0)`` outside it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _local_world_size(world: int) -> int:
    """Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``; the world size when it is not set)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """Check a device spec against this machine and return the device this process runs on.

    Args:
        spec: ``"auto"`` (or ``None``): ``cuda`` if a CUDA GPU is available, else ``cpu``;
            ``"cpu"``; ``"cuda"``; or ``"cuda:N"`` for GPU index ``N``. Case and surrounding
            blanks are ignored; a :class:`torch.device` is read as its string.
        local_rank: the GPU a plain ``cuda`` (or ``auto`` resolving to a GPU) means; an explicit
            ``cuda:N`` is kept. ``None``: under torchrun (``WORLD_SIZE`` > 1) this process's
            ``LOCAL_RANK``, where an explicit ``cuda:N`` is refused when several processes run on the
            node (``LOCAL_WORLD_SIZE`` > 1: they would all use GPU ``N``); alone, the current GPU.

    Returns:
        The :class:`torch.device` (``cuda`` always with an index).

    Raises:
        DeviceError: the spec is not one of the forms above, CUDA is asked for but not available,
            the index is not below ``torch.cuda.device_count()``, or an explicit ``cuda:N`` under
            torchrun with several processes on the node. Raised before any work starts.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    text = "auto" if spec is None else str(spec).strip().lower()
    match = _SPEC.match(text)
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise DeviceError(f"--device {spec!r}: expected {DEVICE_HELP}")
    kind, index = match.group(1), match.group(2)
    if local_rank is None:
        _, world, local = env_ranks()
        if world > 1:
            if kind == "cuda" and index is not None and _local_world_size(world) > 1:
                raise DeviceError(f"--device {spec} under torchrun with {_local_world_size(world)} processes on this "
                                  f"node: every process would use that one GPU; use --device cuda (process i takes "
                                  f"cuda:i, its LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES")
            local_rank = local
    if kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if kind == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise DeviceError(f"--device {spec}: no CUDA GPU is available on this machine "
                          f"(torch.cuda.is_available() is False); use --device cpu or --device auto")
    count = torch.cuda.device_count()
    if index is not None:
        i = int(index)
    elif local_rank is not None:
        i = int(local_rank)
    else:
        i = torch.cuda.current_device()
    if i >= count:
        raise DeviceError(f"--device {spec}: GPU index {i} does not exist (this machine has {count} GPU"
                          f"{'' if count == 1 else 's'}: cuda:0..cuda:{count - 1})")
    return torch.device("cuda", i)

