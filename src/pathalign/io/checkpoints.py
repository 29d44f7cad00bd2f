"""Checkpoint files: read tensors from safetensors / ``.bin`` / ``.pt`` without unpickling objects, and
the training checkpoints of a run folder.

A run's ``checkpoints/`` folder holds ``step_<7-digit step>.pt`` files (the trainer's state dict of
tensors, numbers and JSON strings, saved with ``torch.save``) and ``latest.txt``, the name of the newest
one. Each file is written atomically, then the pointer is replaced, then all but the newest ``keep``
step files are removed; a killed write leaves the previous checkpoint and pointer intact."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import PathalignError
from .atomic import atomic_path, atomic_write_text

LATEST = "latest.txt"


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


def checkpoint_name(step: int) -> str:
    """The file name of the training checkpoint after ``step`` steps."""
    return f"step_{step:07d}.pt"


def write_checkpoint(ckpt_dir: str | Path, step: int, state: dict, keep: int) -> Path:
    """Save ``state`` as ``<ckpt_dir>/step_<step>.pt`` atomically, point ``latest.txt`` at it, keep the newest ``keep``."""
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    with atomic_path(d / name) as tmp:
        torch.save(state, tmp)
    atomic_write_text(name, d / LATEST)
    for old in sorted(d.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return d / name


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint ``latest.txt`` names (None when there is no pointer)."""
    pointer = Path(ckpt_dir) / LATEST
    return Path(ckpt_dir) / pointer.read_text().strip() if pointer.is_file() else None


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint's state (tensors and plain values only).

    Raises:
        CheckpointError: the file is missing or cannot be read; the message names it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any reader failure with the file name
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
