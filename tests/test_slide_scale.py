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

from conftest import TEST_DATA
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


def test_coords_record_mpp_objective_power_and_scale(tmp_path):
    out = tmp_path / "out"
    for scale in ("nominal", "exact-mpp"):
        cfg = PipelineConfig(out=out / scale, stage="patch", progress=False, patch=PatchConfig(20, 256, scale=scale))
        summary = run_pipeline([TEST_DATA / "cmu_small_region.svs"], cfg)
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
    row = run_pipeline([TEST_DATA / "cmu_small_region.svs"], cfg).iloc[0]
    assert row.status == "failed" and "scale 'nominal' (this run 'exact-mpp')" in row.reason


# ---------------------------------------------------------------- the coordinate contract of a features folder

def _features_file(path, target=20.0, patch_size=256, mpp=0.5, level0=20.0, encoder="pathalign-stats", seed=0):
    """A features file as ``preprocess`` writes it (coords on the grid of ``patch_size_level0``)."""
    from pathalign.io.features import write_patch_file

    size0 = int(round(patch_size * level0 / target))
    rng = np.random.default_rng(seed)
    coords = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * size0  # [12, 2]
    write_patch_file(path, coords, np.zeros(len(coords), np.int64),
                     {"patch_size": patch_size, "patch_size_level0": size0, "target_magnification": target,
                      "level0_magnification": level0, "mpp": mpp},
                     rng.normal(size=(len(coords), 8)).astype(np.float16), {"encoder": encoder})


def _folder(d, odd=None):
    """Five slides at 20x; ``odd`` = (slide index, keyword overrides) for one of them."""
    d.mkdir(parents=True, exist_ok=True)
    ids = [f"TCGA-AA-000{i}-01Z-00-DX1" for i in range(5)]
    for i, sid in enumerate(ids):
        kw = odd[1] if odd and odd[0] == i else {}
        _features_file(d / f"{sid}.h5", seed=i, **kw)
    return ids


def _cohort(tmp_path, features_dir, ids):
    import pandas as pd

    from pathalign.cohort import CohortSources, build_cohort, load_cohort

    cases = [s[:12] for s in ids]
    pd.DataFrame({"case_id": cases, "age": np.arange(len(ids)) + 50}).to_csv(tmp_path / "clinical.tsv", sep="\t",
                                                                           index=False)
    pd.DataFrame({"slide_id": ids, "case_id": cases}).to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    build_cohort(CohortSources(clinical=str(tmp_path / "clinical.tsv"), slides=str(tmp_path / "slides.tsv"),
                               features=str(features_dir)), tmp_path / "cohort", progress=False)
    return load_cohort(tmp_path / "cohort")


def test_a_slide_at_another_magnification_is_refused_by_train_and_embed(tmp_path):
    from pathalign.cohort.model_view import CohortData
    from pathalign.evaluate.embed import embed_mean_pool
    from pathalign.io.features_contract import ContractError

    d = tmp_path / "features_pathalign-stats"
    ids = _folder(d, odd=(3, {"target": 10.0, "level0": 20.0}))
    odd = ids[3]
    pattern = rf"target_magnification: 20 \(4 slides: .*\); 10 \(1 slide: {odd}\)"
    with pytest.raises(ContractError, match=pattern):
        embed_mean_pool(d, tmp_path / "emb.h5")
    with pytest.raises(ContractError, match=pattern):
        CohortData(_cohort(tmp_path, d, ids), d, ["wsi"])
    # the same folder without the odd slide is accepted by both
    (d / f"{odd}.h5").unlink()
    assert embed_mean_pool(d, tmp_path / "emb.h5").counts == {"wsi": 4}


def _drop_level0_set_mpp(fh):
    """mpp 1.0 and no level-0 magnification: the patch covers 10 * 256 / (256 * 1.0) = 10x, not the 20x it claims."""
    del fh["coords"].attrs["level0_magnification"]
    fh["coords"].attrs["mpp"] = 1.0


@pytest.mark.parametrize("edit,key", [(lambda fh: fh["coords"].attrs.__setitem__("patch_size", 224), "patch_size: 256"),
                                      (lambda fh: fh.attrs.__setitem__("encoder", "uni"), "encoder: 'pathalign-stats'"),
                                      (_drop_level0_set_mpp, "effective magnification")])
def test_other_contract_breaks_are_named(tmp_path, edit, key):
    from pathalign.io.features_contract import ContractError, check_features_folder

    ids = _folder(tmp_path / "f")
    with h5py.File(tmp_path / "f" / f"{ids[1]}.h5", "a") as fh:
        edit(fh)
    with pytest.raises(ContractError, match=rf"{key}.*{ids[1]}"):
        check_features_folder(tmp_path / "f")


def test_exact_mpp_grids_and_other_tools_files_pass_the_contract(tmp_path):
    from pathalign.io.features_contract import check_features_folder

    d = tmp_path / "features_pathalign-stats"
    ids = _folder(d)
    # an exact-mpp slide: 564 level-0 px at 0.2266 µm/px (effective 20.03x)
    from pathalign.io.features import write_patch_file

    coords = np.array([[0, 0], [564, 0]])
    write_patch_file(d / "exact.h5", coords, np.zeros(2, np.int64),
                     {"patch_size": 256, "patch_size_level0": 564, "target_magnification": 20.0,
                      "level0_magnification": 10 / 0.2266, "mpp": 0.2266},
                     np.zeros((2, 8), np.float16), {"encoder": "pathalign-stats"})
    # a CLAM/EXAONE-style file: patch_size at patch_level 0, no magnification, mpp or encoder attribute
    with h5py.File(d / "clam.h5", "w") as fh:
        fh.create_dataset("coords", data=coords)
        fh["coords"].attrs.update({"patch_size": 564, "patch_level": 0, "downsample": [1.0, 1.0]})
        fh.create_dataset("features", data=np.zeros((2, 8), np.float32))
    got = check_features_folder(d)
    assert set(got) == set(ids) | {"exact", "clam"}
    assert got["clam"]["encoder"] == "pathalign-stats" and got["clam"]["target_magnification"] is None
    assert got["clam"]["patch_size_level0"] == 564 and got["exact"]["effective_magnification"] == pytest.approx(20.03, abs=0.01)


# ---------------------------------------------------------------- pathalign doctor

def test_doctor_reports_each_slide_without_computing(tmp_path, capsys):
    import json

    from pathalign.cli import main
    from slide_factory import blob_slide

    d = tmp_path / "slides"
    d.mkdir()
    blob_slide(d / "a_good.tiff", size=(1024, 768), mpp=0.25, downsamples=(1, 4))
    blob_slide(d / "b_nompp.tiff", size=(512, 512), mpp=None, downsamples=(1,))
    (d / "c_broken.svs").write_bytes(b"II*\x00not a slide at all")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["doctor", str(d), "--json", str(tmp_path / "doctor.json")]) == 3
    table = capsys.readouterr().out
    assert "3 slides: 1 ready, 2 with problems" in table
    rows = {r["slide"]: r for r in json.loads((tmp_path / "doctor.json").read_text())}
    good = rows["a_good"]
    assert good["ok"] and good["opens"] and good["backend"] in ("openslide", "tiffslide")
    assert good["mpp"] == pytest.approx(0.25) and good["mpp_source"] == "file" and good["levels"] == 2
    assert good["level0_magnification"] == 40 and good["patch_size_level0"] == 512 and good["read_level"] == 0
    assert good["dimensions"] == [[1024, 768], [256, 192]]
    assert not rows["b_nompp"]["ok"] and rows["b_nompp"]["opens"] is False
    assert "neither microns-per-pixel nor an objective power" in rows["b_nompp"]["problems"][0]
    assert not rows["c_broken"]["ok"] and "c_broken.svs" in rows["c_broken"]["problems"][0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(before + ["doctor.json"])  # nothing else written
    # with --mpp the slide without one is ready (and says where its mpp came from); exact-mpp changes the grid
    assert main(["doctor", str(d / "b_nompp.tiff"), str(d / "a_good.tiff"), "--mpp", "0.5", "--scale", "exact-mpp",
                 "--json", str(tmp_path / "again.json")]) == 0
    rows = {r["slide"]: r for r in json.loads((tmp_path / "again.json").read_text())}
    assert rows["b_nompp"]["mpp_source"] == "user" and "--mpp 0.5 used" in rows["b_nompp"]["warnings"][0]
    assert rows["a_good"]["patch_size_level0"] == exaone_patch_size_level0(256, 0.25, None)


def test_doctor_flags_an_objective_power_that_disagrees_with_the_mpp(monkeypatch):
    from pathalign.slides import doctor

    monkeypatch.setattr(doctor, "open_slide", lambda path, backend, mpp: FakeSlide(0.2266, 20))
    row = doctor.check_slide("fake_slide.svs", PatchConfig())
    assert row["ok"] and row["level0_magnification"] == 40 and row["patch_size_level0"] == 512
    assert "objective power 20x disagrees with the mpp (0.2266 µm/px = 40x); the mpp is used" in row["warnings"][0]
    monkeypatch.setattr(doctor, "open_slide", lambda path, backend, mpp: FakeSlide(0.5, 20))
    row = doctor.check_slide("fake_slide.svs", PatchConfig(magnification=40))
    assert not row["ok"] and "above the scan's 20x" in row["problems"][0]


def test_preprocess_cli_takes_scale_and_refuses_an_unknown_one(tmp_path, capsys):
    from pathalign.cli import main

    assert main(["patch", str(TEST_DATA / "cmu_small_region.svs"), "--out", str(tmp_path), "--scale", "exact-mpp",
                 "--quiet"]) == 0
    with h5py.File(tmp_path / "coords" / "cmu_small_region.h5") as fh:
        assert fh["coords"].attrs["scale"] == "exact-mpp"
        assert fh["coords"].attrs["patch_size_level0"] == exaone_patch_size_level0(256, 0.499, 20)
    with pytest.raises(SystemExit):
        main(["patch", str(TEST_DATA / "cmu_small_region.svs"), "--out", str(tmp_path), "--scale", "exact"])
    assert "invalid choice: 'exact'" in capsys.readouterr().err
