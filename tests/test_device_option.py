"""``--device`` on every verb that computes: present in each verb's options, ``auto`` equal to
``cpu`` on a CPU machine (same numbers), and an unavailable device refused before any work."""
from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest
import torch

from conftest import REFERENCE, needs_cuda, rel_err
from helpers import random_slide
from pathalign.cli import build_parser, main
from pathalign.devices import DeviceError
from pathalign.io.features import write_patch_file

COMPUTE_VERBS = ["extract", "preprocess", "pretrain-rna", "train", "embed", "ablate", "demo"]
SEED = 7


@pytest.mark.parametrize("verb", COMPUTE_VERBS)
def test_every_compute_verb_has_a_device_option(verb):
    parser = build_parser(verb)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    opts = {o for a in sub.choices[verb]._actions for o in a.option_strings}
    assert "--device" in opts, f"{verb} has no --device"


@pytest.fixture
def slide_features(tmp_path):
    """Three feature files of 48-d patch features (the reference slide encoder's input dim)."""
    rng = np.random.default_rng(SEED)
    out = tmp_path / "features"
    for i in range(3):
        feats, coords, frag = random_slide(rng, 40 + 10 * i, 48, 2)
        write_patch_file(out / f"slide-{i}.h5", coords.numpy(), frag.numpy(), {"patch_size": 256},
                         features=feats.numpy(), file_attrs={"encoder": "test"})
    weights = tmp_path / "ep25_small_weights.safetensors"
    from safetensors.torch import load_file, save_file

    ref = load_file(str(REFERENCE / "ep25_small.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items() if k.startswith("weights.")}, str(weights))
    return out, weights


def _embed(features, weights, out, device) -> np.ndarray:
    rc = main(["embed", "--slide-encoder", "exaone-path-2.5", "--weights", str(weights), "--features", str(features),
               "--out", str(out), "--quiet", "--device", device])
    assert rc == 0
    with h5py.File(out, "r") as fh:
        return fh["wsi/embeddings"][:]


def test_embed_device_cpu_and_auto_agree_on_cpu(slide_features, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this test is about a CPU machine
    features, weights = slide_features
    cpu = _embed(features, weights, tmp_path / "cpu.h5", "cpu")
    auto = _embed(features, weights, tmp_path / "auto.h5", "auto")
    assert cpu.shape[0] == 3 and np.isfinite(cpu).all()
    np.testing.assert_array_equal(cpu, auto, err_msg=f"seed {SEED}")


def test_unavailable_device_is_refused_before_any_work(slide_features, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    features, weights = slide_features
    out = tmp_path / "never.h5"
    for device in ("cuda", "cuda:1", "tpu"):
        try:
            rc = main(["embed", "--slide-encoder", "exaone-path-2.5", "--weights", str(weights), "--features",
                       str(features), "--out", str(out), "--quiet", "--device", device])
        except DeviceError as e:  # a verb run without the CLI's error handler
            rc, msg = 2, str(e)
        else:
            msg = capsys.readouterr().err
        assert rc == 2 and "--device" in msg and device in msg, (device, rc, msg)
        assert not out.exists()


@needs_cuda()
def test_embed_cuda_matches_cpu(slide_features, tmp_path):
    features, weights = slide_features
    cpu = _embed(features, weights, tmp_path / "cpu.h5", "cpu")
    gpu = _embed(features, weights, tmp_path / "cuda.h5", "cuda")
    assert rel_err(gpu, cpu) < 1e-3, f"seed {SEED}: rel err {rel_err(gpu, cpu):.2e}"
