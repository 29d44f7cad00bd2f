"""Slide pipeline: reading, segmentation, patching, extraction, interop, bad input, resume."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import DATA
from helpers import seeded_rng
from slide_factory import blob_slide
from pathalign import read_patch_features
from pathalign.slides.patch_encoders import PatchEncoderError, build_patch_encoder
from pathalign.io.features import is_complete
from pathalign.slides.patch import PatchConfig, patch_slide
from pathalign.slides.pipeline import PipelineConfig, run_pipeline
from pathalign.slides.reader import open_slide
from pathalign.io.tissue import read_geojson
from pathalign.slides.segment import segment_slide


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("blobs")
    return blob_slide(d / "blobs.tiff")


def test_segmentation_fragments_and_hole(blobs):
    path, label = blobs
    with open_slide(path) as slide:
        seg = segment_slide(slide)
    assert len(seg.fragments) == 3
    assert sorted(len(f.holes) for f in seg.fragments) == [0, 0, 1]
    # each fragment's centroid falls inside a different true blob
    hits = {int(label[int(f.exterior[:, 1].mean()), int(f.exterior[:, 0].mean())]) for f in seg.fragments if not f.holes}
    assert len(hits) == 2 and -1 not in hits


def test_patches_lie_in_tissue_with_the_right_fragment(blobs):
    path, label = blobs
    with open_slide(path) as slide:
        seg = segment_slide(slide)
        grid = patch_slide(slide, seg.fragments, PatchConfig(magnification=20, patch_size=128))
    s = grid.attrs["patch_size_level0"]
    assert s == 128 and len(grid.coords) > 50
    blob_to_frag = {}
    for (x, y), f in zip(grid.coords, grid.fragment):
        cell = label[y:y + s, x:x + s]
        assert (cell >= 0).mean() >= 0.45  # in tissue (threshold 0.5, measured on the segmentation)
        blob = np.bincount(cell[cell >= 0]).argmax()
        assert blob_to_frag.setdefault(blob, f) == f  # one fragment id per blob
    assert len(set(blob_to_frag.values())) == 3


def test_coords_are_level0_when_reading_another_level(tmp_path):
    path, label = blob_slide(tmp_path / "x40.tiff", size=(4096, 3072), mpp=0.25, downsamples=(1, 2, 4))
    with open_slide(path) as slide:
        assert slide.magnification == pytest.approx(40)
        seg = segment_slide(slide)
        grid = patch_slide(slide, seg.fragments, PatchConfig(magnification=20, patch_size=128))
        assert grid.attrs["read_level"] == 1 and grid.attrs["patch_size_level0"] == 256 and grid.attrs["read_size"] == 128
        assert (grid.coords % 256 == 0).all() and grid.coords.max() < 4096
        x, y = grid.coords[len(grid.coords) // 2]
        at_level1 = slide.read_region((x, y), 1, (128, 128)).astype(float)
        at_level0 = slide.read_region((x, y), 0, (256, 256)).astype(float).reshape(128, 2, 128, 2, 3).mean((1, 3))
        assert np.abs(at_level1 - at_level0).mean() < 3  # the same place, at two resolutions


def test_both_reader_backends_agree(blobs):
    path, _ = blobs
    a, b = open_slide(path, "openslide"), open_slide(path, "tiffslide")
    assert a.level_dimensions == b.level_dimensions and a.mpp == b.mpp == 0.5
    for loc, level, size in [((1000, 700), 0, (300, 200)), ((512, 256), 1, (100, 120))]:
        np.testing.assert_array_equal(a.read_region(loc, level, size), b.read_region(loc, level, size))


def test_stain_features_match_scikit_image():
    skimage_color = pytest.importorskip("skimage.color")
    rng = seeded_rng()
    img = rng.integers(0, 256, (1, 40, 50, 3), dtype=np.uint8)
    enc = build_patch_encoder("pathalign-stats")
    mine = enc.model.hed(enc.transform(torch.from_numpy(img)))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(mine, skimage_color.rgb2hed(img[0]), atol=1e-6)
    feats = enc.model(enc.transform(torch.from_numpy(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))))
    assert feats.shape == (3, enc.dim) and torch.isfinite(feats).all()


def test_timm_encoder_builds_loads_local_weights_and_explains_missing_ones(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    enc = build_patch_encoder("exaone-path-2.5", pretrained=False)
    x = torch.from_numpy(seeded_rng().integers(0, 255, (2, 256, 256, 3), dtype=np.uint8))
    with torch.no_grad():
        out = enc.model(enc.transform(x))
    assert out.shape == (2, 768)
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    again = build_patch_encoder("exaone-path-2.5", weights=tmp_path / "w.safetensors")
    with torch.no_grad():
        assert torch.allclose(again.model(enc.transform(x)), out, atol=1e-5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PatchEncoderError, match="--weights"):
        build_patch_encoder("uni")
    with pytest.raises(PatchEncoderError, match="unknown patch encoder"):
        build_patch_encoder("nope")


def _write(path, **datasets):
    with h5py.File(path, "w") as fh:
        for name, (data, attrs) in datasets.items():
            ds = fh.create_dataset(name, data=data)
            for k, v in attrs.items():
                ds.attrs[k] = v


def test_reads_trident_clam_and_exaone_files(tmp_path):
    # two separate blobs of patches on a 512-px grid, and one isolated patch
    coords = np.array([[0, 0], [512, 0], [512, 512], [1024, 1024], [4096, 0], [4608, 512], [9000, 9000]])
    feats = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    _write(tmp_path / "trident.h5", coords=(coords, {"patch_size": 256, "patch_size_level0": 512,
                                                    "target_magnification": 20, "level0_magnification": 40}),
           features=(feats, {}))
    pf = read_patch_features(tmp_path / "trident.h5")
    assert pf.attrs["patch_size_level0"] == 512 and pf.features.shape == (7, 5)
    assert sorted(np.flatnonzero(pf.fragment == f).tolist() for f in set(pf.fragment.tolist())) == [[0, 1, 2, 3], [4, 5], [6]]
    assert len(set(pf.fragment[:4])) == 1 and len(set(pf.fragment[4:6])) == 1 and len(set(pf.fragment)) == 3
    _write(tmp_path / "clam.h5", coords=(coords, {"patch_size": 256, "patch_level": 1, "downsample": [2.0, 2.0]}))
    pf = read_patch_features(tmp_path / "clam.h5")
    assert pf.features is None and pf.attrs["patch_size_level0"] == 512 and len(set(pf.fragment)) == 3
    contour = np.array([3, 3, 3, 5, 5, 5, 9])
    _write(tmp_path / "exaone.h5", coords=(coords, {"patch_size_level0": 512}), features=(feats, {}),
           contour_index=(contour, {}))
    pf = read_patch_features(tmp_path / "exaone.h5")
    assert pf.fragment.tolist() == contour.tolist()


def test_real_svs_end_to_end(tmp_path):
    cfg = PipelineConfig(out=tmp_path, progress=False)
    summary = run_pipeline([DATA / "cmu_small_region.svs"], cfg)
    assert summary.status.tolist() == ["done"]
    pf = read_patch_features(tmp_path / "features_pathalign-stats" / "cmu_small_region.h5")
    assert pf.features.shape == (summary.patches.iat[0], 46) and pf.features.dtype == np.float16
    assert len(pf) > 20 and np.isfinite(pf.features).all()
    assert (tmp_path / "segmentation" / "cmu_small_region.png").is_file()
    assert len(read_geojson(tmp_path / "segmentation" / "cmu_small_region.geojson")) >= 1
    assert pf.attrs["mpp"] == pytest.approx(0.499) and pf.attrs["patch_size_level0"] == 256


def test_bad_slides_in_a_batch_are_reported_and_good_ones_done(tmp_path, blobs):
    good, _ = blobs
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(good, d / "good.tiff")
    data = good.read_bytes()
    (d / "truncated.tiff").write_bytes(data[: len(data) // 3])
    (d / "notaslide.svs").write_text("this is not a slide\n")
    blob_slide(d / "blank.tiff", size=(1024, 1024), blobs=[])
    blob_slide(d / "nompp.tiff", size=(1024, 1024), mpp=None)
    cfg = PipelineConfig(out=tmp_path / "out", progress=False, patch=PatchConfig(patch_size=128))
    summary = run_pipeline(sorted(d.iterdir()), cfg).set_index("slide_id")
    assert summary.loc["good", "status"] == "done" and summary.loc["good", "patches"] > 50
    assert summary.loc["blank", "status"] == "no tissue" and summary.loc["blank", "patches"] == 0
    assert summary.loc["nompp", "status"] == "failed" and "microns-per-pixel" in summary.loc["nompp", "reason"]
    for bad in ("truncated", "notaslide"):
        assert summary.loc[bad, "status"] == "failed" and bad in summary.loc[bad, "reason"]
    assert is_complete(tmp_path / "out" / "features_pathalign-stats" / "good.h5")
    # --mpp rescues the slide without mpp
    cfg.mpp = 0.5
    again = run_pipeline([d / "nompp.tiff", d / "good.tiff"], cfg).set_index("slide_id")
    assert again.loc["nompp", "status"] == "done" and again.loc["good", "status"] == "skipped"


def test_unknown_encoder_is_a_clear_error(tmp_path, blobs, capsys):
    from pathalign.cli import main

    assert main(["extract", str(blobs[0]), "--out", str(tmp_path), "--encoder", "nonesuch", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown patch encoder 'nonesuch'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_killed_preprocess_resumes_without_losing_or_half_writing(tmp_path, small_synth):
    syn, truth = small_synth
    slides = sorted((syn / "slides").glob("*.tiff"))[:10]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pathalign", "preprocess", *map(str, slides), "--out", str(out), "--patch-size", "64",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    feats = out / "features_pathalign-stats"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(feats.glob("*.h5"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = list(feats.glob("*.h5"))
    assert 0 < len(done_before) < len(slides), "kill happened too late to test resume"
    assert all(is_complete(p) for p in done_before)  # nothing half-written looks complete
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(p.stem for p in feats.glob("*.h5")) == sorted(p.stem for p in slides)
    for p in feats.glob("*.h5"):
        pf = read_patch_features(p)
        assert is_complete(p) and pf.features.shape[0] == len(pf.coords)
    assert "skipped" in rerun.stdout


@pytest.mark.slow
def test_torchrun_shards_slides_and_gathers_the_summary(tmp_path, small_synth):
    syn, _ = small_synth
    slides = sorted((syn / "slides").glob("*.tiff"))[:6]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pathalign", "preprocess", *map(str, slides), "--out", str(out), "--patch-size", "64",
                           "--min-fragment-um2", "2000", "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("6 slides: 6 done") == 1  # one summary, on rank 0, covering both ranks
    import pandas as pd

    summary = pd.read_csv(out / "summary_extract.tsv", sep="\t")
    assert sorted(summary.slide_id) == sorted(p.stem for p in slides)  # every slide exactly once
    assert all(is_complete(out / "features_pathalign-stats" / f"{p.stem}.h5") for p in slides)


def test_tiled_low_resolution_read_equals_a_whole_level_resize(blobs):
    import cv2

    from pathalign.slides.segment import low_res_image

    path, _ = blobs
    with open_slide(path) as slide:
        small, ds = low_res_image(slide, 4.0, tile=300)  # many uneven tiles
        whole, ds2 = low_res_image(slide, 4.0, tile=10_000)  # one tile
        assert ds == pytest.approx(ds2) and small.shape == whole.shape
        assert np.abs(small.astype(int) - whole.astype(int)).mean() < 2.0  # only tile-seam rounding differs
        ref = cv2.resize(slide.read_level(0), (whole.shape[1], whole.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(whole.astype(int) - ref.astype(int)).mean() < 1.0
