"""Published weights named by Hub id, resolved offline from a local fake Hugging Face cache
(``models--ORG--NAME/snapshots/<rev>/...`` + ``refs/main``, ``HF_HUB_OFFLINE=1``): the right
subfolder for each component, the same tensors as a local path, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DATA, REFERENCE
from pathalign import SlideEncoder
from pathalign.errors import PathalignError
from pathalign.io.hub import HubError, parse_hub_id, resolve_checkpoint, resolve_source
from pathalign.slides.patch_encoders import PatchEncoderError, build_patch_encoder

REPO = "LGAI-EXAONE/EXAONE-Path-2.5"
REV = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_repo(cache: Path, repo: str, files: dict[str, dict[str, torch.Tensor] | str]) -> Path:
    """Write ``files`` (path in repo → tensors or text) as the HF cache holds a downloaded snapshot."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / REV
    for rel, content in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            (snap / rel).write_text(content)
        else:
            save_file({k: v.contiguous() for k, v in content.items()}, str(snap / rel))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def patch_weights():
    """A 1-block EXAONE Path 2.5 patch encoder in the Hub export's key layout."""
    model = build_patch_encoder("exaone-path-2.5", pretrained=False, depth=1).model
    return {"patch_encoder.backbone." + k.removeprefix("trunk."): v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def slide_weights():
    ref = load_file(str(REFERENCE / "ep25_small.safetensors"))
    return {k: v for k, v in ref.items() if k.startswith("weights.")}


def _same(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_hub_id_spellings():
    assert parse_hub_id(REPO) == (REPO, None)
    assert parse_hub_id("hf-hub:MahmoodLab/UNI") == ("MahmoodLab/UNI", None)
    assert parse_hub_id("owkin/phikon-v2@main") == ("owkin/phikon-v2", "main")
    assert parse_hub_id("/abs/path/model.safetensors") is None
    assert parse_hub_id("model.safetensors") is None
    assert parse_hub_id("weights/uni.bin") is None  # a mistyped local file, not a repository


def test_patch_encoder_by_hub_id_uses_the_patch_encoder_subfolder(offline_cache, patch_weights, slide_weights, tmp_path):
    snap = fake_hub_repo(offline_cache, REPO, {"patch-encoder/model.safetensors": patch_weights,
                                               "patch-encoder/config.json": "{}",
                                               "slide-encoder/model.safetensors": slide_weights})
    local = build_patch_encoder("exaone-path-2.5", weights=snap / "patch-encoder").model
    for weights in (REPO, f"hf-hub:{REPO}", None):  # None: the entry's own Hub id
        _same(build_patch_encoder("exaone-path-2.5", weights=weights).model, local)


def test_slide_encoder_from_exaone_path_by_hub_id(offline_cache, patch_weights, slide_weights):
    snap = fake_hub_repo(offline_cache, REPO, {"patch-encoder/model.safetensors": patch_weights,
                                               "slide-encoder/model.safetensors": slide_weights})
    want = SlideEncoder.from_exaone_path(slide_weights)
    for source in (REPO, snap, snap / "slide-encoder", snap / "slide-encoder" / "model.safetensors"):
        _same(SlideEncoder.from_exaone_path(source), want)


def test_offline_and_missing_give_clear_errors(offline_cache, monkeypatch):
    with pytest.raises(HubError, match=r"MahmoodLab/UNI is not in the local Hub cache and HF_HUB_OFFLINE is set"):
        resolve_source("MahmoodLab/UNI")
    with pytest.raises(PatchEncoderError, match=r"'uni'.*HF_HUB_OFFLINE.*--weights"):
        build_patch_encoder("uni")
    with pytest.raises(PathalignError, match=REPO):
        SlideEncoder.from_exaone_path(REPO)
    with pytest.raises(HubError, match="no such file or folder"):
        resolve_source("/no/such/weights.safetensors")
    fake_hub_repo(offline_cache, REPO, {"patch-encoder/config.json": "{}"})
    with pytest.raises(HubError, match="no model.safetensors or pytorch_model.bin"):
        resolve_checkpoint(REPO, subfolder="patch-encoder")


def test_extract_cli_reports_an_unresolvable_hub_id(offline_cache, tmp_path, capsys):
    from pathalign.cli import main

    slide = DATA / "cmu_small_region.svs"
    try:
        rc = main(["extract", str(slide), "--out", str(tmp_path / "out"), "--encoder", "uni",
                   "--weights", "MahmoodLab/UNI", "--quiet"])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    assert rc == 2  # an input error: one line and exit 2, not a crash (1) or a per-slide failure
    assert "MahmoodLab/UNI" in out.err and "HF_HUB_OFFLINE" in out.err and "Traceback" not in out.err
