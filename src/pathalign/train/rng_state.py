"""Per-rank random streams of a training run: how each is seeded, saved and restored.

Rule (documented in the README's resume paragraph):

* the model is initialised from ``seed`` on every rank (identical weights, before DDP);
* then each rank draws from its own stream, seeded with :func:`rank_seed` ``(seed, rank)``: rank 0
  keeps the stream that initialised the model (``rank_seed(seed, 0) == seed``, so a single-process run
  is what it always was), rank ``r > 0`` is re-seeded with a value derived from ``(seed, r)`` by NumPy's
  ``SeedSequence``. So ranks draw different dropout masks for their different patients;
* a checkpoint holds the state of every rank: the CPU generator, every CUDA generator the process sees,
  and NumPy's and Python's global generators (the data path itself uses only generators seeded from
  ``(seed, step)``, so it needs none of them; they are kept for code that does). Each rank gets its own
  state back on resume; a resume with another number of processes is refused (:class:`RNGStateError`);
* a checkpoint written before per-rank states (one ``rng_torch`` CPU state) restores that on rank 0 and
  re-seeds rank ``r > 0`` from ``(seed, r, step)``: deterministic, but not the stream the old run drew.

The states travel as tensors and lists, so that ``torch.load(weights_only=True)`` reads them.
"""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch

from ..errors import PathalignError

__all__ = ["RNGStateError", "rank_seed", "seed_rank_stream", "capture", "restore", "gather_states",
           "restore_from_checkpoint"]


class RNGStateError(PathalignError, RuntimeError):
    """A checkpoint's random states cannot be given back to this run (another number of processes)."""


def rank_seed(seed: int, rank: int, *extra: int) -> int:
    """The seed of rank ``rank``'s stream: ``seed`` itself for rank 0 (no ``extra``), else a 63-bit value
    derived from ``(seed, rank, *extra)`` by ``numpy.random.SeedSequence``."""
    if rank == 0 and not extra:
        return int(seed)
    words = np.random.SeedSequence([int(seed), int(rank), *map(int, extra)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 32 | int(words[1])) & (2**63 - 1))


def seed_rank_stream(seed: int, rank: int) -> None:
    """Start rank ``rank``'s own stream (CPU and every CUDA generator); rank 0 keeps its current one."""
    if rank != 0:
        torch.manual_seed(rank_seed(seed, rank))


def capture(device: torch.device | None = None) -> dict:
    """This process's random states: ``cpu``, ``cuda`` (one per visible GPU), ``numpy``, ``python``.

    Args:
        device: the process's device (recorded, so that a resume can check it finds that GPU's generator).
    """
    state: dict = {"cpu": torch.get_rng_state(), "cuda": [], "device": str(device) if device is not None else "cpu"}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    version, internal, gauss_next = random.getstate()
    state["python"] = {"version": int(version), "state": list(internal), "gauss_next": gauss_next}
    return state


def restore(state: dict) -> None:
    """Give this process the random states of :func:`capture`.

    CUDA generators are restored when the process sees as many GPUs as when they were saved; otherwise
    only the generator of the recorded device, with a warning for the others.
    """
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            dev = torch.device(state.get("device", "cuda:0"))
            index = dev.index or 0
            if dev.type == "cuda" and index < min(len(cuda), torch.cuda.device_count()):
                torch.cuda.set_rng_state(cuda[index], index)
            warnings.warn(f"the checkpoint holds {len(cuda)} CUDA generator states, this process sees "
                          f"{torch.cuda.device_count()} GPUs: only {dev}'s was restored", stacklevel=2)
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def gather_states(rank: int, world_size: int, device: torch.device | None = None) -> list[dict] | None:
    """Every rank's :func:`capture`, in rank order, on rank 0 (``None`` elsewhere); a collective when
    ``world_size > 1`` (every rank must call it)."""
    mine = capture(device)
    if world_size == 1:
        return [mine]
    import torch.distributed as dist

    out = [None] * world_size if rank == 0 else None
    dist.gather_object(mine, out, dst=0)
    return out


def restore_from_checkpoint(checkpoint: dict, seed: int, rank: int, world_size: int) -> None:
    """Give this rank its random state from a training checkpoint (see the module docstring).

    Raises:
        RNGStateError: the checkpoint was written by another number of processes.
    """
    states = checkpoint.get("rng_states")
    if states is None:  # written before per-rank states: one CPU state, rank 0's
        if rank == 0:
            torch.set_rng_state(checkpoint["rng_torch"])
        else:
            torch.manual_seed(rank_seed(seed, rank, int(checkpoint.get("step", 0))))
        return
    if len(states) != world_size:
        raise RNGStateError(f"--resume with {world_size} process{'es' if world_size > 1 else ''}, but the checkpoint "
                            f"was written by {len(states)}: each process's random stream is saved and restored on "
                            f"its own rank, so resume with {len(states)} (torchrun --nproc_per_node / --nnodes), or "
                            f"start a new run")
    restore(states[rank])
