"""Physical scale: mpp first (Trident's nominal bins), or the exact mpp (EXAONE Path 2.5), per the peers' code.

The peers' rules are reimplemented here from their source, independently of ``slides.scale``:

* Trident, mahmoodlab/TRIDENT@a91fa8490e0210ebbbe58452c3babe009e0ab7ca,
  ``trident/wsi_objects/WSI.py`` ``_fetch_magnification`` (mpp bins), ``OpenSlideWSI.py``
  ``_fetch_magnification`` (objective power only when the bins give None; mpp rounded to 4
  decimals in ``_fetch_mpp``) and ``WSIPatcher.py`` ``__init__`` (``src_pixel_size = 10 / src_mag``,
  ``patch_size_src = round(patch_size * dst_pixel_size / src_pixel_size)``).
* EXAONE Path 2.5, LG-AI-EXAONE/EXAONE-Path-2.5@9089a14405e1ae7dd3397009da1197feaa48ccad,
  ``exaonepath/patches/patchify.py``: ``this_mpp`` from ``openslide.mpp-x``, else ``10 / objective-power``;
  ``eff_patch_size = int(int(patch_size) * (float(standard_mpp) / float(this_mpp)))``, standard_mpp 0.5.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import DATA
from pathalign.slides.patch import PatchConfig, patch_geometry
from pathalign.slides.pipeline import PipelineConfig, run_pipeline
from pathalign.slides.reader import SlideError, SlideReader


def trident_magnification(mpp, objective_power):
    """Trident's ``WSI._fetch_magnification`` then ``OpenSlideWSI._fetch_magnification``, as written there."""
    if mpp is not None:
        mpp_x = round(float(mpp), 4)
        if mpp_x < 0.16:
            return 80
        elif mpp_x < 0.2:
            return 60
        elif mpp_x < 0.3:
            return 40
        elif mpp_x < 0.6:
            return 20
        elif mpp_x < 1.2:
            return 10
        elif mpp_x < 2.4:
            return 5
        raise ValueError(mpp)
    return int(objective_power)


def trident_patch_size_level0(patch_size, src_mag, dst_mag):
    src_pixel_size, dst_pixel_size = 10 / src_mag, 10 / dst_mag
    return round(patch_size * (dst_pixel_size / src_pixel_size))


def exaone_patch_size_level0(patch_size, mpp, objective_power, standard_mpp=0.5):
    this_mpp = mpp if mpp is not None else 10.0 / float(objective_power)
    return int(int(patch_size) * (float(standard_mpp) / float(this_mpp)))


class _Handle:
    level_dimensions = ((40000, 30000), (10000, 7500), (2500, 1875))
    level_downsamples = (1.0, 4.0, 16.0)

    def close(self):
        pass


class FakeSlide(SlideReader):
    """A reader whose file properties are given (no file is read)."""

    backend = "fake"

    def __init__(self, file_mpp, objective_power, mpp=None):
        self._props = {"mpp": file_mpp, "objective_power": objective_power}
        super().__init__("fake_slide.svs", mpp=mpp)

    def _open(self):
        return _Handle()

    def _properties(self):
        return dict(self._props)


@pytest.mark.parametrize("mpp,power", [(0.2266, 40), (0.2266, 20), (0.25, 40), (0.5, 20), (0.499, 40), (0.152, 40),
                                       (0.19, 60), (0.92, 10), (1.9, 5), (None, 40), (None, 20), (0.5, None)])
@pytest.mark.parametrize("target,patch_size", [(20, 256), (10, 224), (40, 512)])
def test_nominal_scale_is_tridents(mpp, power, target, patch_size):
    slide = FakeSlide(mpp, power)
    mag = trident_magnification(mpp, power)
    assert slide.magnification == mag
    if target > mag:
        with pytest.raises(ValueError, match="above the scan"):
            patch_geometry(slide, PatchConfig(target, patch_size))
        return
    geo = patch_geometry(slide, PatchConfig(target, patch_size))
    assert geo["patch_size_level0"] == trident_patch_size_level0(patch_size, mag, target)
    assert geo["scale"] == "nominal" and geo["level0_magnification"] == mag


@pytest.mark.parametrize("mpp,power", [(0.2266, 40), (0.2266, 20), (0.25, 40), (0.5, 20), (0.499, 20), (0.2425, None),
                                       (None, 40), (None, 20), (0.46, 20)])
def test_exact_mpp_scale_is_exaone_patchify(mpp, power):
    slide = FakeSlide(mpp, power)
    geo = patch_geometry(slide, PatchConfig(20, 256, scale="exact-mpp"))
    assert geo["patch_size_level0"] == exaone_patch_size_level0(256, mpp, power)
    assert geo["scale"] == "exact-mpp"


def test_a_40x_scan_at_0_2266_gets_564_exact_and_512_nominal():
    slide = FakeSlide(0.2266, 40)
    assert patch_geometry(slide, PatchConfig(20, 256, scale="exact-mpp"))["patch_size_level0"] == 564
    assert patch_geometry(slide, PatchConfig(20, 256))["patch_size_level0"] == 512


def test_mpp_wins_over_a_disagreeing_objective_power():
    slide = FakeSlide(0.2266, 20)  # the file says 20x, its pixels are 40x
    geo = patch_geometry(slide, PatchConfig(20, 256))
    assert geo["level0_magnification"] == 40 and geo["patch_size_level0"] == 512
    assert geo["mpp"] == 0.2266 and geo["mpp_source"] == "file" and geo["objective_power"] == 20


def test_objective_power_only_without_mpp_and_user_mpp_before_it():
    slide = FakeSlide(None, 40)
    assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "objective-power" and slide.magnification == 40
    slide = FakeSlide(None, 20, mpp=0.2266)  # the user's --mpp is an mpp: it comes before the objective power
    assert slide.mpp == 0.2266 and slide.mpp_source == "user" and slide.magnification == 40


def test_neither_mpp_nor_objective_power_is_refused_naming_the_slide():
    with pytest.raises(SlideError, match=r"fake_slide\.svs.*neither microns-per-pixel nor an objective power.*--mpp"):
        FakeSlide(None, None)
    assert FakeSlide(None, None, mpp=0.5).magnification == 20


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="scale must be one of"):
        PatchConfig(scale="exact")


@pytest.mark.skipif(not (DATA / "cmu_small_region.svs").is_file(), reason="needs /work/shared/data/cmu_small_region.svs")
def test_coords_record_mpp_objective_power_and_scale(tmp_path):
    out = tmp_path / "out"
    for scale in ("nominal", "exact-mpp"):
        cfg = PipelineConfig(out=out / scale, stage="patch", progress=False, patch=PatchConfig(20, 256, scale=scale))
        summary = run_pipeline([DATA / "cmu_small_region.svs"], cfg)
        assert (summary.status == "done").all(), summary.reason.tolist()
        with h5py.File(out / scale / "coords" / "cmu_small_region.h5") as fh:
            a = dict(fh["coords"].attrs)
            coords = fh["coords"][()]
        assert a["mpp"] == pytest.approx(0.499) and a["mpp_source"] == "file" and a["objective_power"] == 20
        assert a["scale"] == scale
        want = exaone_patch_size_level0(256, 0.499, 20) if scale == "exact-mpp" else 256
        assert a["patch_size_level0"] == want and np.all(coords % want == 0)
    # one output folder holds one scale
    cfg = PipelineConfig(out=out / "nominal", stage="patch", progress=False, patch=PatchConfig(20, 256, scale="exact-mpp"))
    row = run_pipeline([DATA / "cmu_small_region.svs"], cfg).iloc[0]
    assert row.status == "failed" and "scale 'nominal' (this run 'exact-mpp')" in row.reason
