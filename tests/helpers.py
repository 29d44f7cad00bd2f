"""Random slide inputs for tests."""
from __future__ import annotations

import os
import zlib

import numpy as np
import torch


def seeded_rng(seed: int | None = None) -> np.random.Generator:
    """The generator of a random test, seeded and reproducible; the seed is printed (pytest shows it on failure).

    Default seed: ``PATHALIGN_TEST_SEED`` if set (``random`` draws a fresh one), else a stable hash of the
    running test's id, so every test has its own fixed seed.
    """
    if seed is None:
        env = os.environ.get("PATHALIGN_TEST_SEED", "")
        if env == "random":
            seed = int(np.random.SeedSequence().entropy % (1 << 32))
        elif env:
            seed = int(env)
        else:
            test_id = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
            seed = zlib.crc32(test_id.encode())
    print(f"random test seed: {seed} (rerun with PATHALIGN_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def random_slide(rng: np.random.Generator, n: int, c: int, n_fragments: int, grid: int = 256):
    """A slide of ``n`` patches on a grid, split into ``n_fragments`` spatially separate fragments.

    Returns ``(features float32 [n,c], coords int64 [n,2], fragment int64 [n])``; fragment ids are
    arbitrary (non-contiguous) integers and the patch order is shuffled.
    """
    sizes = np.full(n_fragments, n // n_fragments)
    sizes[: n % n_fragments] += 1
    coords, frag = [], []
    ids = rng.choice(10_000, size=n_fragments, replace=False)
    for f, size in enumerate(sizes):
        side = int(np.ceil(np.sqrt(size)))
        cells = rng.choice(side * side, size=size, replace=False)
        xy = np.stack([cells % side, cells // side], 1) * grid
        xy += np.array([f * (side + 3) * grid, rng.integers(0, 40) * grid])
        coords.append(xy)
        frag.append(np.full(size, ids[f]))
    coords = np.concatenate(coords).astype(np.int64)
    frag = np.concatenate(frag).astype(np.int64)
    perm = rng.permutation(n)
    feats = rng.standard_normal((n, c)).astype(np.float32)
    return torch.from_numpy(feats), torch.from_numpy(coords[perm]), torch.from_numpy(frag[perm])


def init_gloo(rank: int, world: int, init_file: str, timeout_s: float | None = None) -> None:
    """Join a CPU (gloo) process group through a file rendezvous: no TCP port to race for on a shared machine.
    ``timeout_s``: a collective left waiting that long fails instead of hanging (torch's default otherwise)."""
    from datetime import timedelta

    import torch.distributed as dist

    extra = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, **extra)


def close_gloo() -> None:
    """Leave the group together: a rank tearing down while the other still talks to it makes gloo abort."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


class Killed(Exception):
    """A simulated kill of a training run (raised right after a checkpoint was written)."""


def killed_after_checkpoint(at_step: int):
    """A replacement for ``Trainer.save_checkpoint`` that writes the checkpoint as usual and then "kills" the run
    (raises :class:`Killed`) after the checkpoint of step ``at_step``. Patch it in with ``monkeypatch.setattr``
    (or by assignment in a spawned worker); the original is ``Trainer.save_checkpoint``."""
    from pathalign.train.trainer import Trainer

    original = Trainer.save_checkpoint

    def save_then_die(self, step):
        path = original(self, step)
        if step == at_step:
            raise Killed
        return path

    return save_then_die
