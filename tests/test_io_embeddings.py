"""``io/embeddings.py``: the embeddings file round-trips, and per-patient pooling keeps first-appearance order."""
from __future__ import annotations

import numpy as np
import pytest

from pathalign.io.embeddings import (
    EmbeddingsFileError,
    group_by_patient,
    patient_ids,
    patient_means,
    read_embeddings,
    slide_case_id,
    write_embeddings,
    write_slides_file,
)


def test_a_model_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    wsi, rna = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    groups = {"wsi": {"ids": ["s1", "s2", "s3"], "embeddings": wsi, "case_ids": ["p2", "p1", "p2"]},
              "rna": {"ids": ["p1", "p2"], "embeddings": rna, "imputed_fraction": np.array([0, .5], np.float32)}}
    pairs = {"wsi-rna": {"wsi": wsi[:, :2], "rna": rna[:, :2], "t": 10.0, "b": -1.0}}
    attrs = {"model": "m", "skipped_slides": {"s4": "why"}, "heldout_patients": ["p1"]}
    write_embeddings(tmp_path / "sub" / "e.h5", groups, pairs, attrs)
    got = read_embeddings(tmp_path / "sub" / "e.h5")
    # a file written without wsi_level (as before patient-level encoding) reads back as slide level
    assert got["_attrs"] == {"model": "m", "skipped_slides": {"s4": "why"}, "heldout_patients": ["p1"],
                             "wsi_level": "slide"}
    assert got["wsi"]["ids"] == ["s1", "s2", "s3"] and got["wsi"]["case_ids"] == ["p2", "p1", "p2"]
    np.testing.assert_array_equal(got["wsi"]["embeddings"], wsi)
    np.testing.assert_array_equal(got["rna"]["imputed_fraction"], [0, .5])
    assert got["pairs"]["wsi-rna"]["t"] == 10.0 and got["pairs"]["wsi-rna"]["b"] == -1.0
    np.testing.assert_array_equal(got["pairs"]["wsi-rna"]["rna"], rna[:, :2])
    assert slide_case_id(got, "s2") == "p1" and slide_case_id(got, "nope") is None
    assert patient_ids(got, "wsi") == ["p2", "p1", "p2"] and patient_ids(got, "rna") == ["p1", "p2"]


def test_patient_level_attributes_round_trip(tmp_path):
    groups = {"wsi": {"ids": ["s1", "s2"], "embeddings": np.ones((2, 3), np.float32), "case_ids": ["p1", "p1"]}}
    attrs = {"model": "m", "wsi_level": "patient", "patient_token_cap": 100, "capped_patients": {"p1": 250}}
    write_embeddings(tmp_path / "e.h5", groups, {}, attrs)
    got = read_embeddings(tmp_path / "e.h5")["_attrs"]
    assert got == {"model": "m", "wsi_level": "patient", "patient_token_cap": 100, "capped_patients": {"p1": 250}}


def test_a_slides_file_has_no_pairs_and_falls_back_to_slide_ids(tmp_path):
    write_slides_file(tmp_path / "e.h5", "mean-pool:x", ["a", "b"], np.ones((2, 3)), ["a", "b"], {}, case_ids_from="x")
    got = read_embeddings(tmp_path / "e.h5")
    assert "pairs" not in got and got["_attrs"]["skipped_slides"] == {}
    del got["wsi"]["case_ids"]
    assert patient_ids(got, "wsi") == ["a", "b"]


def test_an_unreadable_file_is_a_named_error(tmp_path):
    (tmp_path / "e.h5").write_text("not hdf5")
    with pytest.raises(EmbeddingsFileError, match="e.h5"):
        read_embeddings(tmp_path / "e.h5")


def test_patient_means_pool_in_first_appearance_order():
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    means = patient_means(["b", "a", "b", "c"], x)
    assert list(means) == ["b", "a", "c"]
    np.testing.assert_array_equal(means["b"], (x[0] + x[2]) / 2)
    assert means["b"].dtype == np.float32
    assert patient_means(["b", "a", "b", "c"], x, dtype=np.float64)["a"].dtype == np.float64
    assert list(patient_means(["b", "a", "b", "c"], x, keep={"c", "b", "z"})) == ["b", "c"]
    assert group_by_patient(["b", "a", "b"], ["s1", "s2", "s3"]) == {"b": ["s1", "s3"], "a": ["s2"]}
