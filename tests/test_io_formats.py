"""The small on-disk formats io/ owns beside features, embeddings, cohort and model folders: tissue GeoJSON
and heatmaps files. A damaged file is an error that names it; a written file reads back as written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import seeded_rng
from pathalign.errors import PathalignError
from pathalign.io.heatmaps import HeatmapFileError, SlideHeatmaps, read_heatmaps, write_heatmaps
from pathalign.io.tissue import Fragment, TissueFileError, fragments_to_geojson, read_geojson


def test_tissue_geojson_round_trip_and_qupath_fields(tmp_path):
    rng = seeded_rng()
    ext = np.round(rng.uniform(0, 5000, (6, 2)), 2)
    hole = np.round(rng.uniform(0, 5000, (4, 2)), 2)
    gj = fragments_to_geojson([Fragment(3, ext, [hole]), Fragment(5, ext + 10)], {"mpp": 8.0})
    path = tmp_path / "s.geojson"
    path.write_text(json.dumps(gj))
    back = read_geojson(path)
    assert [f.id for f in back] == [3, 5]
    np.testing.assert_allclose(back[0].exterior, ext)
    np.testing.assert_allclose(back[0].holes[0], hole)
    feat = gj["features"][0]
    assert feat["geometry"]["coordinates"][0][0] == feat["geometry"]["coordinates"][0][-1]  # closed ring (RFC 7946)
    assert feat["properties"]["objectType"] == "annotation"
    assert gj["properties"] == {"mpp": 8.0}


@pytest.mark.parametrize("text", ["{not json", json.dumps({"features": [{"geometry": {}}]}), json.dumps([1, 2])])
def test_a_damaged_tissue_geojson_is_an_error_naming_the_file(tmp_path, text):
    path = tmp_path / "broken_slide.geojson"
    path.write_text(text)
    with pytest.raises(TissueFileError, match="broken_slide.geojson") as info:
        read_geojson(path)
    assert isinstance(info.value, PathalignError)


def test_heatmaps_file_round_trip_and_damaged_file(tmp_path):
    rng = seeded_rng()
    coords = rng.integers(0, 10_000, (7, 2))
    scores = {"attention/block1_rope": rng.random(7).astype(np.float32), "align/rna": rng.random(7).astype(np.float32)}
    write_heatmaps(tmp_path / "s.heatmaps.h5", SlideHeatmaps("s", coords, np.arange(7) % 2, 256.0, scores))
    hm = read_heatmaps(tmp_path / "s.heatmaps.h5")
    assert (hm.slide_id, hm.patch_size_level0) == ("s", 256.0)
    np.testing.assert_array_equal(hm.coords, coords)
    assert set(hm.scores) == set(scores)
    for k, v in scores.items():
        np.testing.assert_array_equal(hm.scores[k], v)
    (tmp_path / "bad.heatmaps.h5").write_bytes(b"not hdf5")
    with pytest.raises(HeatmapFileError, match="bad.heatmaps.h5"):
        read_heatmaps(tmp_path / "bad.heatmaps.h5")


def test_features_file_encoder_attribute(tmp_path):
    import h5py

    from pathalign.io.features_contract import file_encoder

    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh.attrs["encoder"] = "uni"
    with h5py.File(tmp_path / "b.h5", "w") as fh:
        fh.attrs["encoder"] = np.bytes_(b"conch")
    h5py.File(tmp_path / "c.h5", "w").close()
    assert [file_encoder(tmp_path / f"{n}.h5") for n in "abc"] == ["uni", "conch", None]


def test_tissue_geojson_write_and_properties(tmp_path):
    from pathalign.io.tissue import read_geojson_properties, write_geojson

    ext = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    path = write_geojson(tmp_path / "s.geojson", [Fragment(1, ext)], {"mpp": 8.0, "segmenter": {"method": "otsu"}})
    assert [f.id for f in read_geojson(path)] == [1]
    assert read_geojson_properties(path) == {"mpp": 8.0, "segmenter": {"method": "otsu"}}
    (tmp_path / "bare.geojson").write_text(json.dumps({"features": []}))
    assert read_geojson_properties(tmp_path / "bare.geojson") == {}
    for i, text in enumerate(["{oops", "[1]"]):
        (tmp_path / f"bad{i}.geojson").write_text(text)
        with pytest.raises(TissueFileError, match=f"bad{i}.geojson"):
            read_geojson_properties(tmp_path / f"bad{i}.geojson")


def test_training_checkpoints_pointer_and_rotation(tmp_path):
    import torch

    from pathalign.io.checkpoints import CheckpointError, latest_checkpoint, read_checkpoint, write_checkpoint

    d = tmp_path / "checkpoints"
    assert latest_checkpoint(d) is None
    for step in (5, 10, 15):
        path = write_checkpoint(d, step, {"step": step, "w": torch.ones(2) * step}, keep=2)
    assert path.name == "step_0000015.pt" and latest_checkpoint(d) == path
    assert sorted(p.name for p in d.iterdir()) == ["latest.txt", "step_0000010.pt", "step_0000015.pt"]
    assert read_checkpoint(path)["step"] == 15
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="step_0000015.pt: corrupt checkpoint"):
        read_checkpoint(path)
