"""Shared fixtures and helpers for the test suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.exists():  # CI clones main elsewhere with shared/ beside it
    SHARED = Path(os.environ.get("PATHALIGN_SHARED", Path.cwd().parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def needs_cuda():
    return pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("PATHALIGN_GPU_TESTS")),
                              reason="GPU tests: set PATHALIGN_GPU_TESTS=1 on a CUDA machine")
