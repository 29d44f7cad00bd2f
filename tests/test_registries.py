"""Every entry of every registry builds and does its job on a small input.

New entries are picked up automatically (the cases are the registries' own names), and
``test_every_registry_is_covered`` fails when a new registry appears that this file does not test.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import needs_cuda
from pathalign.models.attention import ATTENTION_BACKENDS
from pathalign.models.molecular import MOLECULAR_ENCODERS
from pathalign.models.packing import Segments
from pathalign.models.preprocessing import TRANSFORMS
from pathalign.models.presets import MODEL_PRESETS
from pathalign.models.slide_encoder import SLIDE_ENCODER_PRESETS, SlideEncoder
from pathalign.slides.patch_encoders import PATCH_ENCODERS, build_patch_encoder
from pathalign.slides.reader import SLIDE_BACKENDS
from pathalign.slides.segment import SEGMENTERS, SegmentConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "pathalign"
COVERED = {"TRANSFORMS", "ATTENTION_BACKENDS", "MOLECULAR_ENCODERS", "SLIDE_ENCODER_PRESETS", "PATCH_ENCODERS",
           "SLIDE_BACKENDS", "SEGMENTERS", "MODEL_PRESETS"}


def test_every_registry_is_covered():
    found = set()
    for path in SRC.rglob("*.py"):
        found |= set(re.findall(r"^([A-Z_]+)\s*(?::[^=]+)?=\s*Registry\(", path.read_text(), re.M))
    assert found == COVERED, f"registries not tested here: {sorted(found - COVERED)}; gone: {sorted(COVERED - found)}"


# --- attention backends: each equals per-segment softmax attention written out here -------------

CUDA_ONLY = {"varlen", "flex"}


def _reference_attention(q, k, v, lengths):
    out, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[start:start + n].transpose(0, 1).double() for t in (q, k, v))  # [H,n,Dh]
        weights = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        out.append((weights @ vs).transpose(0, 1))  # [n,H,Dh]
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("name", ATTENTION_BACKENDS.names())
def test_attention_backend_matches_reference(name):
    if name in CUDA_ONLY:
        pytest.skip(f"{name} runs on CUDA only: set PATHALIGN_GPU_TESTS=1 on a CUDA machine "
                    "(test_attention_backend_on_cuda)")
    seed = 1234
    gen = torch.Generator().manual_seed(seed)
    lengths = [5, 17, 5, 1, 9]
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=gen) for _ in range(3))
    out = ATTENTION_BACKENDS.get(name)(q, k, v, Segments(lengths))
    ref = _reference_attention(q, k, v, lengths)
    assert out.shape == q.shape
    assert torch.allclose(out.double(), ref, atol=1e-5), f"seed={seed}: max diff {(out.double() - ref).abs().max()}"


@needs_cuda()
@pytest.mark.parametrize("name", sorted(CUDA_ONLY & set(ATTENTION_BACKENDS.names())))
def test_attention_backend_on_cuda(name):
    seed = 1234
    gen = torch.Generator().manual_seed(seed)
    lengths = [64, 200, 8]
    q, k, v = (torch.randn(sum(lengths), 4, 64, generator=gen) for _ in range(3))
    out = ATTENTION_BACKENDS.get(name)(*(t.cuda().bfloat16() for t in (q, k, v)), Segments(lengths))
    ref = _reference_attention(q, k, v, lengths)
    assert torch.allclose(out.double().cpu(), ref, atol=3e-2), f"seed={seed}"


# --- slide-encoder presets ------------------------------------------------------------------------

@pytest.mark.parametrize("name", SLIDE_ENCODER_PRESETS.names())
def test_slide_encoder_preset_builds_and_encodes(name):
    seed = 7
    torch.manual_seed(seed)
    enc = SlideEncoder.from_preset(name).eval()
    cfg = SLIDE_ENCODER_PRESETS.get(name)
    assert enc.config.dim == cfg.dim and enc.config.depth == cfg.depth
    rng = np.random.default_rng(seed)
    n = 40
    feats = rng.standard_normal((n, cfg.input_dim)).astype(np.float32)
    coords = np.stack([rng.integers(0, 8, n), rng.integers(0, 8, n)], 1) * 256
    frag = rng.integers(0, 2, n)
    out = enc.encode(feats, coords, frag)
    assert out["patch_tokens"].shape[0] == n, f"seed={seed}"
    assert out["slide_embedding"].ndim == 1 and torch.isfinite(out["slide_embedding"]).all(), f"seed={seed}"


# --- patch encoders: every entry builds with random weights and gives its registered dim ----------
# Built on the meta device: the architecture and the output shape are real, no memory is
# allocated (the ViT-g entries would need ~4.5 GB each), no weights are read or downloaded.

@pytest.mark.parametrize("name", PATCH_ENCODERS.names())
def test_patch_encoder_builds_with_its_dim(name):
    spec = PATCH_ENCODERS.get(name)
    with torch.device("meta"):
        enc = build_patch_encoder(name, device="meta", pretrained=False)
        side = spec.preprocess.resize or spec.preprocess.crop or 224  # Resize is then the identity
        patches = enc.transform(torch.zeros(2, side, side, 3, dtype=torch.uint8))
        out = enc.model(patches)
    assert enc.dim == spec.dim
    assert tuple(out.shape) == (2, spec.dim), f"{name}: output {tuple(out.shape)}, registered dim {spec.dim}"


def test_builtin_patch_encoder_on_real_pixels():
    seed = 3
    enc = build_patch_encoder("pathalign-stats")
    rng = np.random.default_rng(seed)
    batch = torch.from_numpy(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    with torch.inference_mode():
        out = enc.model(enc.transform(batch))
    assert out.shape == (3, enc.dim) and torch.isfinite(out).all(), f"seed={seed}"
    assert not torch.allclose(out[0], out[1]), f"seed={seed}: different patches give the same features"


# --- molecular encoders and transforms -----------------------------------------------------------

@pytest.mark.parametrize("name", MOLECULAR_ENCODERS.names())
def test_molecular_encoder_builds(name):
    seed = 5
    torch.manual_seed(seed)
    cls = MOLECULAR_ENCODERS.get(name)
    if name == "frozen_fm":
        from pathalign.models.rna_fm import RNAFMConfig, RNAFoundationModel

        enc = cls(RNAFoundationModel(RNAFMConfig(n_genes=12, dim=6, depth=1)), dim=16)
    else:
        enc = cls(12, dim=16)
    out = enc.train()(torch.randn(4, 12))
    assert out.shape == (4, 16) and torch.isfinite(out).all(), f"seed={seed}"
    out.sum().backward()
    assert any(p.grad is not None for p in enc.parameters()), f"{name}: nothing trainable"


def _molecular_table(name: str, rng: np.random.Generator, n: int = 30, f: int = 40) -> pd.DataFrame:
    if name == "rna":
        values = rng.gamma(2.0, 10.0, (n, f))
    elif name == "snp":
        values = (rng.random((n, f)) < 0.3).astype(float)
    elif name == "cnv":
        values = rng.integers(-2, 3, (n, f)).astype(float)
    elif name == "methylation":
        values = rng.beta(2.0, 2.0, (n, f))
        values[rng.random((n, f)) < 0.05] = np.nan
    else:
        values = rng.standard_normal((n, f))
    return pd.DataFrame(values, index=[f"P{i}" for i in range(n)], columns=[f"F{j}" for j in range(f)])


@pytest.mark.parametrize("name", TRANSFORMS.names())
def test_molecular_transform_fits_transforms_and_round_trips(name):
    seed = 11
    rng = np.random.default_rng(seed)
    table = _molecular_table(name, rng)
    train, test = table.iloc[:20], table.iloc[20:]
    tf = TRANSFORMS.get(name)().fit(train)
    out = tf.transform(train)
    assert out.dtype == np.float32 and out.shape == (20, tf.output_dim) and np.isfinite(out).all(), f"seed={seed}"
    observed = ~np.isnan(train[tf.features].to_numpy())
    values = out[:, : len(tf.features)]
    if tf.standardise:  # training columns centred on the observed values
        means = np.array([values[observed[:, j], j].mean() for j in range(values.shape[1])])
        assert np.abs(means).max() < 1e-4, f"seed={seed}"
    restored = type(tf).from_state_dict(json.loads(json.dumps(tf.state_dict())))
    assert np.array_equal(restored.transform(test), tf.transform(test)), f"seed={seed}"


# --- slide readers and segmenters ----------------------------------------------------------------

@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    from slide_factory import blob_slide

    return blob_slide(tmp_path_factory.mktemp("registry_slide") / "blob.tiff", size=(1024, 768), seed=2)


@pytest.mark.parametrize("name", [n for n in SLIDE_BACKENDS.names() if n != "wsidicom"])  # DICOM: test_slides_formats
def test_slide_reader_reads_the_pixels_written(name, blob):
    import tifffile

    path, _ = blob
    reference = tifffile.imread(path, series=0, level=0)  # an independent reader of the same file
    with SLIDE_BACKENDS.get(name)(path) as slide:
        assert slide.dimensions == (reference.shape[1], reference.shape[0])
        assert slide.mpp == pytest.approx(0.5)
        region = slide.read_region((100, 60), 0, (300, 200))
    assert np.array_equal(region[..., :3], reference[60:260, 100:400, :3])


@pytest.mark.parametrize("name", SEGMENTERS.names())
def test_segmenter_finds_the_tissue_blobs(name, blob):
    from pathalign.slides.reader import open_slide

    path, label = blob
    with open_slide(path) as slide:
        fragments = SEGMENTERS.get(name)(slide, SegmentConfig(method=name, min_fragment_um2=2000))
    assert len(fragments) == label.max() + 1


def test_unknown_name_is_an_expected_error_and_a_key_error():
    from pathalign.errors import PathalignError
    from pathalign.registry import Registry

    reg = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(KeyError) as e:
        reg.get("b")
    assert isinstance(e.value, PathalignError)
    assert str(e.value) == "unknown widget 'b'; known: a"  # no KeyError quoting in the CLI's one line


# --- model presets: each builds a PathAlignModel whose pair heads give a finite loss ----------------------

@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_model_preset_builds_and_trains_one_step(name):
    from pathalign import create_model
    from pathalign.models.siglip import MultimodalSigLIPLoss

    seed = 11
    torch.manual_seed(seed)
    model = create_model(name, modalities=["rna", "snp"], input_dims={"rna": 12, "snp": 9})
    batch = {"valid": {"rna": torch.ones(4, dtype=torch.bool), "snp": torch.ones(4, dtype=torch.bool)},
             "rna": torch.randn(4, 12), "snp": torch.randn(4, 9)}
    loss = MultimodalSigLIPLoss(balance=model.config.balance)(model(batch)).loss
    loss.backward()
    assert torch.isfinite(loss), f"seed={seed}"
    assert all(p.grad is not None for p in model.encoders.parameters() if p.requires_grad), f"seed={seed}"
