"""Slide pipeline under hostile conditions: full disk, huge slides, changed settings, bad coordinates."""
from __future__ import annotations

import inspect
import resource
import signal
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from pathalign.io.features import is_complete
from slide_factory import blob_slide


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG

    return apply


@pytest.mark.slow
def test_a_full_disk_fails_only_the_slides_whose_write_fails(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    blob_slide(d / "a_small.tiff", size=(768, 512), blobs=[((300, 250), (150, 120))])
    for name in ("b_big", "c_big"):
        blob_slide(d / f"{name}.tiff", size=(1536, 1024))
    out = tmp_path / "out"
    base = [sys.executable, "-m", "pathalign"]
    # segmentation, thumbnails and coords first, without a limit (the crash came on a rerun that had coords)
    from pathalign.slides.patch import PatchConfig
    from pathalign.slides.pipeline import PipelineConfig, run_pipeline

    pre = run_pipeline(sorted(d.iterdir()), PipelineConfig(out=out, stage="patch", progress=False,
                                                           patch=PatchConfig(patch_size=64)))
    assert (pre.status == "done").all(), pre
    extract = [*base, "extract", str(d), "--out", str(out), "--patch-size", "64", "--quiet"]
    # 16 KiB per file: the small slide's features fit, the big slides' do not
    proc = subprocess.run(extract, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(16 * 1024))
    assert proc.returncode == 3, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    feats = out / "features_pathalign-stats"
    assert sorted(p.name for p in feats.iterdir()) == ["a_small.h5"]  # no partial or temporary files
    assert is_complete(feats / "a_small.h5")
    summary = pd.read_csv(out / "summary_extract.tsv", sep="\t").set_index("slide_id")
    assert summary.loc["a_small", "status"] == "done"
    for name in ("b_big", "c_big"):
        assert summary.loc[name, "status"] == "failed"
        assert f"{name}.h5" in summary.loc[name, "reason"] and "too large" in summary.loc[name, "reason"]
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr
    # nothing fits, not even the summary file: the report still reaches stdout
    (feats / "a_small.h5").unlink()
    (out / "summary_extract.tsv").unlink()
    proc = subprocess.run(extract, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(100))
    assert proc.returncode == 3, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "3 slides: 3 failed" in proc.stdout and all(n in proc.stdout for n in ("a_small", "b_big", "c_big"))
    assert "summary_extract.tsv" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "summary_extract.tsv").exists() and list(feats.iterdir()) == []


def _h5(path, coords, **attrs):
    import h5py

    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset("coords", data=coords)
        for k, v in attrs.items():
            ds.attrs[k] = v
        fh.create_dataset("features", data=np.zeros((len(coords), 4), np.float32))
    return path


def _components_by_dense_grid(coords: np.ndarray, step: float) -> np.ndarray:
    """The plain reference: label the full grid with scipy.ndimage (8-neighbour), ids in raster order."""
    from scipy import ndimage

    cells = np.round((coords - coords.min(axis=0)) / step).astype(np.int64)
    grid = np.zeros(cells.max(axis=0)[::-1] + 1, bool)
    grid[cells[:, 1], cells[:, 0]] = True
    labels, _ = ndimage.label(grid, structure=np.ones((3, 3), bool))
    return labels[cells[:, 1], cells[:, 0]] - 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grid_components_equal_a_dense_grid_labelling(seed):
    from pathalign.io.features import grid_fragments

    rng = np.random.default_rng(seed)
    step = 256
    side = int(rng.integers(5, 40))
    cells = np.argwhere(rng.random((side, side)) < rng.uniform(0.2, 0.6))[:, ::-1]  # [N, 2] (x, y)
    cells = np.vstack([cells, cells[rng.integers(0, len(cells), 5)]])  # a few patches twice
    coords = cells * step + int(rng.integers(0, 5000))
    coords = coords[rng.permutation(len(coords))]
    np.testing.assert_array_equal(grid_fragments(coords, step), _components_by_dense_grid(coords, step),
                                  err_msg=f"seed {seed}")


def test_nan_or_negative_coordinates_are_a_clear_error(tmp_path):
    from pathalign import read_patch_features
    from pathalign.io.features import FeatureFileError

    good = np.array([[0.0, 0.0], [256.0, 0.0], [512.0, 256.0]])
    assert read_patch_features(_h5(tmp_path / "ok.h5", good, patch_size_level0=256)).coords.dtype == np.int64
    for name, row in [("nan", [np.nan, 0.0]), ("inf", [256.0, np.inf]), ("neg", [-256.0, 0.0]), ("half", [0.5, 0])]:
        bad = good.copy()
        bad[1] = row
        path = _h5(tmp_path / f"{name}.h5", bad, patch_size_level0=256)
        with pytest.raises(FeatureFileError, match=rf"{name}\.h5: coords row 1 "):
            read_patch_features(path)
    path = _h5(tmp_path / "negint.h5", np.array([[0, 0], [5, -3]]), patch_size_level0=256)
    with pytest.raises(FeatureFileError, match=r"negint\.h5: coords row 1 "):
        read_patch_features(path)


def test_a_far_outlier_patch_does_not_allocate_its_extent(tmp_path):
    import tracemalloc

    from pathalign import read_patch_features

    # three patches, no fragment ids, no patch size: the step is inferred (256), and a dense grid
    # over the extent would be 200 001 x 200 001 cells (37 GiB)
    coords = np.array([[0, 0], [256, 0], [256 * 200_000, 256 * 200_000]], np.int64)
    path = _h5(tmp_path / "outlier.h5", coords)
    tracemalloc.start()
    try:
        pf = read_patch_features(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pf.fragment.tolist() == [0, 0, 1]
    assert peak < 5 * 2**20, f"peak traced allocation {peak / 2**20:.1f} MiB"


def _random_slide(path, seed, size=(1000, 760), downsamples=(1, 4)):
    """A pyramidal TIFF of seeded random RGB noise (0.5 µm/px), with a darker tissue-like block."""
    import tifffile

    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 5: w // 2] //= 2
    with tifffile.TiffWriter(path) as tw:
        for i, ds in enumerate(downsamples):
            level = img if ds == 1 else cv2.resize(img, (w // ds, h // ds), interpolation=cv2.INTER_AREA)
            tw.write(level, tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=0 if i == 0 else 1,
                     resolution=(1e4 / (0.5 * ds), 1e4 / (0.5 * ds)), resolutionunit="CENTIMETER", metadata=None)
    return path


class _Recorder:
    """Wraps a backend handle and records the size of every region asked of it."""

    def __init__(self, handle):
        self.handle, self.sizes = handle, []

    def read_region(self, location, level, size):
        self.sizes.append(tuple(size))
        return self.handle.read_region(location, level, size)

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_reading_never_asks_the_backend_for_more_than_a_tile(tmp_path, backend):
    from pathalign.slides.reader import open_slide
    from pathalign.slides.segment import low_res_image

    seed = 7
    path = _random_slide(tmp_path / "r.tiff", seed)
    budget = 96 * 80
    with open_slide(path, backend) as slide:
        plain = {}  # the plain path: the whole level in one backend call (the slide is opaque)
        for lvl in (0, 1):
            im = np.asarray(slide._handle.read_region((0, 0), lvl, slide.level_dimensions[lvl]))
            assert im.shape[2] == 3 or (im[..., 3] == 255).all()
            plain[lvl] = im[..., :3]
        rec = slide._handle = _Recorder(slide._handle)
        slide.max_read_px = budget
        for lvl in (0, 1):
            np.testing.assert_array_equal(slide.read_level(lvl), plain[lvl], err_msg=f"seed {seed} level {lvl}")
        img, ds = low_res_image(slide, 2.0)  # level 1 is exactly 2 µm/px: the path that read it in one call
        assert ds == 4 and img.shape == plain[1].shape
        np.testing.assert_array_equal(img, plain[1], err_msg=f"seed {seed}")
        if "transform" in inspect.signature(low_res_image).parameters:  # one channel, tile by tile
            sat, _ = low_res_image(slide, 2.0, tile=50, transform=lambda t: cv2.cvtColor(t, cv2.COLOR_RGB2HSV)[..., 1])
            np.testing.assert_array_equal(sat, cv2.cvtColor(plain[1], cv2.COLOR_RGB2HSV)[..., 1], err_msg=f"seed {seed}")
        assert rec.sizes and max(w * h for w, h in rec.sizes) <= budget, max(rec.sizes, key=lambda s: s[0] * s[1])


def test_composite_on_white_matches_the_float_formula():
    from pathalign.slides.reader import composite_on_white

    seed = 11
    rgba = np.random.default_rng(seed).integers(0, 256, (37, 29, 4), dtype=np.uint8)
    a = rgba[..., 3:4] / 255.0
    ref = rgba[..., :3] * a + 255 * (1 - a)  # float64, the plain formula
    got = composite_on_white(rgba)
    assert got.dtype == np.uint8 and np.abs(got - ref).max() < 1.0 + 1e-9, f"seed {seed}"
    opaque, clear = rgba.copy(), rgba.copy()
    opaque[..., 3], clear[..., 3] = 255, 0
    np.testing.assert_array_equal(composite_on_white(opaque), rgba[..., :3])
    assert (composite_on_white(clear) == 255).all()


def test_patching_band_by_band_equals_one_raster(blobs_slide):
    from pathalign.slides.patch import PatchConfig, patch_slide
    from pathalign.slides.reader import open_slide
    from pathalign.slides.segment import segment_slide

    with open_slide(blobs_slide) as slide:
        frags = segment_slide(slide).fragments
        cfg = PatchConfig(patch_size=64)
        whole = patch_slide(slide, frags, cfg, band_cells=1 << 40)
        banded = patch_slide(slide, frags, cfg, band_cells=1)  # one patch row per band
    assert len(whole.coords) > 100
    np.testing.assert_array_equal(banded.coords, whole.coords)
    np.testing.assert_array_equal(banded.fragment, whole.fragment)
    np.testing.assert_array_equal(banded.tissue_fraction, whole.tissue_fraction)


@pytest.fixture(scope="module")
def blobs_slide(tmp_path_factory):
    return blob_slide(tmp_path_factory.mktemp("blobs") / "blobs.tiff")[0]


def test_outputs_made_with_other_settings_are_not_reused(tmp_path, blobs_slide):
    from pathalign import read_patch_features
    from pathalign.slides.patch import PatchConfig
    from pathalign.slides.pipeline import PipelineConfig, run_pipeline
    from pathalign.slides.segment import SegmentConfig

    out = tmp_path / "out"
    feats = out / "features_pathalign-stats" / "blobs.h5"

    def run(stage="extract", **patch):
        cfg = PipelineConfig(out=out, stage=stage, progress=False, patch=PatchConfig(**{"patch_size": 128, **patch}))
        return run_pipeline([blobs_slide], cfg).iloc[0]

    first = run()
    assert first.status == "done"
    before = read_patch_features(feats)
    assert run().status == "skipped"  # same settings: reused
    for stage, change, named in [("extract", {"patch_size": 64}, "patch_size 128 (this run 64)"),
                                 ("extract", {"magnification": 10}, "magnification 20.0 (this run 10"),
                                 ("patch", {"tissue_threshold": 0.9}, "tissue_threshold 0.5 (this run 0.9)")]:
        row = run(stage, **change)
        assert row.status == "failed", (stage, change, row.reason)
        assert named in row.reason and "--out" in row.reason, row.reason
    cfg = PipelineConfig(out=out, progress=False, patch=PatchConfig(patch_size=128), segment=SegmentConfig(seg_mpp=4.0))
    row = run_pipeline([blobs_slide], cfg).iloc[0]
    assert row.status == "failed" and "segmenter.seg_mpp 2.0 (this run 4.0)" in row.reason, row.reason
    after = read_patch_features(feats)  # the old output is kept whole, never mixed
    np.testing.assert_array_equal(after.coords, before.coords)
    np.testing.assert_array_equal(after.features, before.features)
    # another folder computes the new settings
    out = tmp_path / "out64"
    assert run(patch_size=64).status == "done"
    assert read_patch_features(out / "features_pathalign-stats" / "blobs.h5").attrs["patch_size_level0"] == 64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segmentation_filters_band_by_band_equal_whole_image_filters(seed):
    from pathalign.slides.segment import filter_in_bands

    rng = np.random.default_rng(seed)
    img = (rng.random((int(rng.integers(50, 300)), int(rng.integers(20, 200)))) < 0.4).astype(np.uint8) * 255
    for k in (3, 5, 9):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        for fn, halo in [(lambda b, k=k: cv2.medianBlur(b, k), k // 2),
                         (lambda b, kernel=kernel: cv2.morphologyEx(b, cv2.MORPH_CLOSE, kernel), 2 * (k // 2))]:
            for band in (1, 7, 64, 10_000):
                np.testing.assert_array_equal(filter_in_bands(img.copy(), fn, halo, band), fn(img.copy()),
                                              err_msg=f"seed {seed} k {k} band {band}")
