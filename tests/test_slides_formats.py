"""DICOM WSI (wsidicom) and OME-TIFF (tifffile/tiffslide) slides: the same pixels give the same segmentation and grid.

The DICOM WSI is written from the CMU region by ``wsidicomizer`` (lossless JPEG-LS, the OpenSlide
source, no added levels); the OME-TIFFs by ``tifffile``. Each must preprocess to the SVS's
fragments, patch coordinates and fragment ids.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile

from conftest import DATA
from pathalign.io.tissue import read_geojson
from pathalign.slides.patch import PatchConfig
from pathalign.slides.pipeline import PipelineConfig, find_slides, run_pipeline
from pathalign.slides.reader import open_slide

SVS = DATA / "cmu_small_region.svs"
MPP = 0.499


@pytest.fixture(scope="module")
def cmu_rgb():
    with open_slide(SVS) as s:
        return s.read_level(0)


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory):
    pytest.importorskip("wsidicomizer")
    from wsidicom.codec.settings import JpegLsSettings
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    out = tmp_path_factory.mktemp("dicom") / "cmu_dicom"
    out.mkdir()
    WsiDicomizer.convert(SVS, out, preferred_source=SourceIdentifier.OPENSLIDE, encoding=JpegLsSettings(),
                         force_transcoding=True, add_missing_levels=False)
    return out


def _write_ome(path, rgb, levels=(1,), resolution=True):
    meta = {"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": MPP,
            "PhysicalSizeYUnit": "µm"}
    kw = dict(tile=(256, 256), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path, ome=True) as tw:
        res = dict(resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER") if resolution else {}
        tw.write(rgb, subifds=len(levels) - 1, metadata=meta, **res, **kw)
        for ds in levels[1:]:
            res = dict(resolution=(1e4 / (MPP * ds), 1e4 / (MPP * ds)), resolutionunit="CENTIMETER") if resolution else {}
            tw.write(np.ascontiguousarray(rgb[::ds, ::ds]), subfiletype=1, **res, **kw)
    return path


def test_dicom_wsi_reads_the_svs_pixels(dicom_slide, cmu_rgb):
    assert find_slides([str(dicom_slide)]) == [dicom_slide]  # the folder of instances is one slide
    with open_slide(dicom_slide) as s:
        assert s.backend == "wsidicom" and s.mpp == pytest.approx(MPP) and s.mpp_source == "file"
        assert s.level_dimensions == [(2220, 2967)]
        np.testing.assert_array_equal(s.read_level(0), cmu_rgb)
        edge = s.read_region((2200, 2950), 0, (64, 64))  # past the edge: white, as OpenSlide's padding
        np.testing.assert_array_equal(edge[:17, :20], cmu_rgb[2950:, 2200:])
        assert (edge[17:] == 255).all() and (edge[:, 20:] == 255).all()


def test_ome_tiff_pyramid_is_read_by_tifffile(tmp_path, cmu_rgb):
    path = _write_ome(tmp_path / "pyr.ome.tiff", cmu_rgb, levels=(1, 4), resolution=False)
    with open_slide(path) as s:  # OpenSlide sees only the first page of an OME SubIFD pyramid
        assert s.backend == "tiffslide" and s.level_count == 2 and s.mpp == pytest.approx(MPP)
        np.testing.assert_array_equal(s.read_level(0), cmu_rgb)


def test_dicom_and_ome_tiff_preprocess_to_the_svs_grid(dicom_slide, cmu_rgb, tmp_path):
    ome = _write_ome(tmp_path / "cmu_ome.ome.tif", cmu_rgb)
    out = tmp_path / "out"
    summary = run_pipeline([SVS, dicom_slide, ome], PipelineConfig(out=out, stage="patch", progress=False,
                                                                  patch=PatchConfig(patch_size=128)))
    assert (summary.status == "done").all(), summary.reason.tolist()
    ref_frags = read_geojson(out / "segmentation" / "cmu_small_region.geojson")
    with h5py.File(out / "coords" / "cmu_small_region.h5") as fh:
        ref = fh["coords"][()], fh["fragment"][()], dict(fh["coords"].attrs)
    assert len(ref[0]) > 100
    for sid in ("cmu_dicom", "cmu_ome.ome"):
        frags = read_geojson(out / "segmentation" / f"{sid}.geojson")
        assert len(frags) == len(ref_frags)
        for a, b in zip(frags, ref_frags):
            np.testing.assert_array_equal(a.exterior, b.exterior)
        with h5py.File(out / "coords" / f"{sid}.h5") as fh:
            np.testing.assert_array_equal(fh["coords"][()], ref[0])
            np.testing.assert_array_equal(fh["fragment"][()], ref[1])
            attrs = dict(fh["coords"].attrs)
        for k in ("patch_size_level0", "mpp", "level0_magnification", "read_level", "read_size"):
            assert attrs[k] == pytest.approx(ref[2][k]), (sid, k)
