"""Checkpoint files: read tensors from safetensors / ``.bin`` / ``.pt`` without unpickling objects."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import PathalignError


class CheckpointError(PathalignError, ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a safetensors, ``.bin`` or ``.pt`` file (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any reader failure with the file name
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "module"):  # common wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd
