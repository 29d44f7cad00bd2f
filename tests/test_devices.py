"""``pathalign.devices.resolve_device``: one rule for ``--device``, checked before any work."""
from __future__ import annotations

import pytest
import torch

from pathalign.devices import DeviceError, resolve_device
from pathalign.errors import PathalignError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_cpu_and_auto_without_gpu(no_gpu):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_gpu_is_an_expected_error(no_gpu, spec):
    with pytest.raises(DeviceError, match=r"--device cuda.*no CUDA GPU") as e:
        resolve_device(spec)
    assert isinstance(e.value, PathalignError)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", "auto:1", "", "cuda:-1", "tpu"])
def test_malformed_spec_names_the_option(no_gpu, spec):
    with pytest.raises(DeviceError, match=r"--device .*expected auto .*cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_cuda_index_and_local_rank(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # explicit index wins
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_cuda_index_out_of_range(two_gpus):
    with pytest.raises(DeviceError, match=r"cuda:2.*GPU index 2 does not exist.*2 GPUs"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match=r"GPU index 3 does not exist"):
        resolve_device("cuda", local_rank=3)
