"""The cohort's model-ready view takes the molecular transforms from its caller (cohort does not import models)."""
from __future__ import annotations

import numpy as np
import pytest

from cohort_tables import build, write_tables
from pathalign.cohort.model_view import CohortData
from pathalign.models.preprocessing import MODEL_TRANSFORMS, TRANSFORMS, make_transform


def test_molecular_modalities_need_the_transforms_and_a_saved_state_round_trips(tmp_path):
    cohort = build(write_tables(tmp_path / "in"), tmp_path / "cohort")
    with pytest.raises(ValueError, match="needs transforms="):
        CohortData(cohort, None, ["rna"])
    fitted = CohortData(cohort, None, ["rna", "cnv"], transforms=MODEL_TRANSFORMS)
    assert fitted.preprocessing["rna"]["kind"] == "rna" and fitted.valid["rna"].all()
    again = CohortData(cohort, None, ["rna", "cnv"], preprocessing=fitted.preprocessing, transforms=MODEL_TRANSFORMS)
    for m in ("rna", "cnv"):
        np.testing.assert_array_equal(again.arrays[m], fitted.arrays[m])


def test_model_transforms_are_the_registry_s():
    rna = MODEL_TRANSFORMS.new("rna", {"units": {"rna": "tpm"}})
    assert type(rna) is type(make_transform("rna", {"units": {"rna": "tpm"}}))
    assert type(MODEL_TRANSFORMS.embedding()) is TRANSFORMS.get("embedding")
