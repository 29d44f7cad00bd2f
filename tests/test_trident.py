"""Trident job folders: fragment ids from the tissue GeoJSON Trident writes beside its patches.

The files are written the way Trident's own code writes them (mahmoodlab/TRIDENT):
``IO.save_h5`` (chunks of one row, unlimited first axis, attributes per dataset),
``IO.coords_to_h5`` (the coords attributes), ``WSI.extract_patch_features`` (features file:
``features`` + ``coords`` with the coords attributes), ``WSI.segment_tissue`` /
``IO.mask_to_gdf`` (a GeoDataFrame with ``tissue_id`` and Polygon geometry, saved by
geopandas' GeoJSON driver with CRS EPSG:3857), and the folder layout of ``Processor`` /
``run_batch_of_slides.py``. The expected fragment of every patch is computed here
independently: analytic point-in-shape tests and a brute-force distance to densely sampled
boundaries.
"""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from pathalign.io.features import grid_fragments, read_patch_features
from pathalign.io.trident import FragmentFallbackWarning, TissueGeoJSONError

SLIDE = "slideA"
SRC_MAG, DST_MAG, PATCH = 40, 20, 256
PS0 = PATCH * SRC_MAG // DST_MAG  # Trident's patch_size_level0 (512)
WIDTH, HEIGHT = 7000, 5000

# tissue pieces in level-0 px: A has a hole, A and B lie closer than one patch (the grid merges them)
A = [(0, 0), (2100, 0), (2100, 2100), (0, 2100)]
A_HOLE = [(600, 600), (600, 1450), (1450, 1450), (1450, 600)]  # other orientation than the exterior
B = [(2200, 0), (3500, 0), (3500, 1000), (2200, 1000)]
C = [(5000, 3000), (6200, 3000), (5000, 4200)]  # x >= 5000, y >= 3000, x + y <= 9200


def in_tissue(x, y) -> int:
    """The piece (0, 1, 2) whose tissue holds (x, y), or -1: analytic, independent of the code under test."""
    if 0 < x < 2100 and 0 < y < 2100 and not (600 < x < 1450 and 600 < y < 1450):
        return 0
    if 2200 < x < 3500 and 0 < y < 1000:
        return 1
    if x > 5000 and y > 3000 and x + y < 9200:
        return 2
    return -1


def boundary_distance(x, y, rings) -> float:
    """Distance to the rings' boundaries, by sampling each edge every 0.25 px."""
    best = np.inf
    for ring in rings:
        pts = np.asarray(ring + [ring[0]], float)
        for p, q in zip(pts[:-1], pts[1:]):
            n = int(np.ceil(np.linalg.norm(q - p) * 4)) + 1
            s = p + np.linspace(0, 1, n)[:, None] * (q - p)
            best = min(best, float(np.sqrt(((s - (x, y)) ** 2).sum(1)).min()))
    return best


def trident_save_h5(path, assets, attributes):
    """What trident.IO.save_h5(path, assets, attributes, mode='w') writes."""
    with h5py.File(path, "w") as f:
        for key, val in assets.items():
            dset = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                    chunks=(1,) + val.shape[1:], dtype=val.dtype)
            dset[:] = val
            for k, v in attributes.get(key, {}).items():
                dset.attrs[k] = json.dumps(v) if isinstance(v, dict) else ("None" if v is None else v)


def geojson_feature(tissue_id, rings):
    closed = [[[float(x), float(y)] for x, y in ring + [ring[0]]] for ring in rings]
    return {"type": "Feature", "properties": {"tissue_id": tissue_id},
            "geometry": {"type": "Polygon", "coordinates": closed}}


def trident_coords():
    """Trident's patcher with min_tissue_proportion 0: grid tiles (top-left, step PS0) whose square touches tissue."""
    kept = []
    for y in range(0, HEIGHT, PS0):
        for x in range(0, WIDTH, PS0):
            if any(in_tissue(px, py) >= 0 for px in range(x + 4, x + PS0, 8) for py in range(y + 4, y + PS0, 8)):
                kept.append((x, y))
    return np.asarray(kept, np.int64)


def make_job(root, with_geojson=True):
    """A Trident job folder for one slide: contours_geojson/, <mag>x_<ps>px_<overlap>px_overlap/{patches,features_*}."""
    coords = trident_coords()
    coords_dir = root / f"{float(DST_MAG):g}x_{PATCH}px_0px_overlap"
    (coords_dir / "patches").mkdir(parents=True)
    attrs = {"patch_size": PATCH, "patch_size_level0": PS0, "level0_magnification": SRC_MAG,
             "target_magnification": DST_MAG, "overlap": 0, "name": SLIDE, "savetodir": str(coords_dir),
             "level0_width": WIDTH, "level0_height": HEIGHT}
    trident_save_h5(coords_dir / "patches" / f"{SLIDE}_patches.h5", {"coords": coords}, {"coords": attrs})
    feats_dir = coords_dir / "features_conch_v15"
    feats_dir.mkdir()
    feats = np.random.default_rng(0).standard_normal((len(coords), 8)).astype(np.float32)
    trident_save_h5(feats_dir / f"{SLIDE}.h5", {"features": feats, "coords": coords},
                    {"features": {"name": SLIDE, "savetodir": str(feats_dir), "encoder": "conch_v15"},
                     "coords": attrs})
    if with_geojson:
        (root / "contours_geojson").mkdir()
        doc = {"type": "FeatureCollection", "name": SLIDE,
               "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
               "features": [geojson_feature(0, [A, A_HOLE]), geojson_feature(1, [B]), geojson_feature(2, [C])]}
        (root / "contours_geojson" / f"{SLIDE}.geojson").write_text(json.dumps(doc, indent=1))
    return coords, feats_dir / f"{SLIDE}.h5", coords_dir / "patches" / f"{SLIDE}_patches.h5"


def expected_fragments(coords):
    rings = {0: [A, A_HOLE], 1: [B], 2: [C]}
    out, kinds = [], {"inside": 0, "hole": 0, "outside": 0}
    for x, y in coords + PS0 / 2:
        piece = in_tissue(x, y)
        if piece < 0:
            d = sorted((boundary_distance(x, y, r), k) for k, r in rings.items())
            assert d[1][0] - d[0][0] > 2, f"ambiguous test patch at centre {(x, y)}: {d}"
            piece = d[0][1]
            kinds["hole" if (600 < x < 1450 and 600 < y < 1450) else "outside"] += 1
        else:
            kinds["inside"] += 1
        out.append(piece)
    return np.array(out), kinds


def test_trident_job_gives_one_fragment_per_tissue_piece(tmp_path):
    coords, feats_path, coords_path = make_job(tmp_path / "job")
    want, kinds = expected_fragments(coords)
    assert kinds["hole"] > 0 and kinds["outside"] > 0 and kinds["inside"] > 0, kinds  # every case is exercised
    assert (want == 0).any() and (want == 1).any() and (want == 2).any()
    # the defect: the patch grid joins A and B (less than a patch apart)
    assert len(np.unique(grid_fragments(coords.astype(float), PS0))) < 3
    for path in (feats_path, coords_path):
        pf = read_patch_features(path)
        np.testing.assert_array_equal(pf.coords, coords)
        np.testing.assert_array_equal(pf.fragment, want, err_msg=str(path))
        assert pf.attrs["fragment_source"] == f"trident-geojson:{tmp_path / 'job' / 'contours_geojson' / 'slideA.geojson'}"
    assert read_patch_features(feats_path).features.shape == (len(coords), 8)


def test_without_geojson_falls_back_to_the_grid_with_a_warning_naming_the_slide(tmp_path):
    coords, feats_path, _ = make_job(tmp_path / "job", with_geojson=False)
    with pytest.warns(FragmentFallbackWarning, match=r"slide 'slideA' has no fragment ids and no tissue GeoJSON"):
        pf = read_patch_features(feats_path)
    assert pf.attrs["fragment_source"] == "grid-connected-components"
    np.testing.assert_array_equal(pf.fragment, grid_fragments(coords.astype(float), PS0))
    # a features file copied away from its job folder is in the same case
    alone = tmp_path / "elsewhere" / "slideA.h5"
    alone.parent.mkdir()
    shutil.copy(feats_path, alone)
    with pytest.warns(FragmentFallbackWarning, match="slideA"):
        read_patch_features(alone)


def test_unusable_geojson_is_an_error_naming_the_file(tmp_path):
    _, feats_path, _ = make_job(tmp_path / "job")
    gj = tmp_path / "job" / "contours_geojson" / "slideA.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"tissue_id": 0}, "geometry": {"type": "Point", "coordinates": [1, 2]}}]}))
    with pytest.raises(TissueGeoJSONError, match=r"slideA.geojson: feature 0 is a 'Point'"):
        read_patch_features(feats_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kdtree_ring_distance_equals_brute_force(seed):
    from pathalign.io.trident import _distance_to_rings

    rng = np.random.default_rng(seed)
    rings = []
    for _ in range(2):  # an uneven ring (long and short segments) and a hole-like inner one
        n = int(rng.integers(3, 300))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(200, 3000, n) / (len(rings) + 1)
        rings.append(np.c_[r * np.cos(t), r * np.sin(t)] + rng.uniform(-50, 50, 2))
    pts = rng.uniform(-4000, 4000, (2000, 2))
    fast = _distance_to_rings(pts, rings, brute=0)
    slow = _distance_to_rings(pts, rings, brute=1 << 40)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-9, err_msg=f"seed {seed}")
