"""Inference on a cohort whose molecular feature names differ from the model's: refused, matched or reported."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from cohort_tables import N_GENES, N_PATIENTS, N_PROBES, build, trained_run, write_tables
from helpers import seeded_rng
from pathalign.errors import PathalignError
from pathalign.evaluate.embed import embed_with_model
from pathalign.io.embeddings import read_embeddings


@pytest.fixture(scope="module")
def molecular_model(tmp_path_factory):
    """A model trained (3 steps) on a cohort with Ensembl-versioned RNA, SYMBOL|ENTREZ CNV and probe ids."""
    tmp = tmp_path_factory.mktemp("contract")
    cohort, run = trained_run(tmp)
    return cohort, run / "model", tmp


def _embed(model, cohort, out):
    embed_with_model(model, cohort, out, progress=False)
    return read_embeddings(out)


def test_names_normalised_where_unambiguous():
    from pathalign.models.feature_names import match_features, normalise_feature_name

    assert normalise_feature_name("ENSG00000141510.17") == "ENSG00000141510"
    assert normalise_feature_name("TP53|7157") == "TP53"
    assert normalise_feature_name("?|100130426") == "?|100130426"
    assert normalise_feature_name("ENSG00000182378.14_PAR_Y") == "ENSG00000182378.14_PAR_Y"
    assert normalise_feature_name("RP11-34P13.7") == "RP11-34P13.7"  # a clone-based symbol keeps its dot
    # two table columns with one normalised name: ambiguous, not matched
    ov = match_features(["ENSG00000000001.1", "TP53"], ["ENSG00000000001.2", "ENSG00000000001.3", "TP53|7157"])
    assert ov.columns == {"TP53": "TP53|7157"} and ov.missing == ["ENSG00000000001.1"]


@pytest.mark.parametrize("modality,which", [("rna", "rna_names"), ("cnv", "cnv_names"),
                                            ("methylation", "meth_names")])
def test_every_name_changed_is_refused_naming_modality_overlap_and_examples(molecular_model, tmp_path,
                                                                            modality, which):
    cohort, model, tmp = molecular_model
    n = N_PROBES if modality == "methylation" else N_GENES
    base = {"rna_names": [f"ENSG{i:011d}.{i % 7 + 1}" for i in range(N_GENES)],
            "cnv_names": [f"GENE{i}|{1000 + i}" for i in range(N_GENES)],
            "meth_names": [f"cg{i:08d}" for i in range(N_PROBES)]}[which]
    renamed = [f"{b}.1" if modality != "rna" else f"X{b}" for b in base]  # a '.1' suffix; RNA: another id scheme
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", **{which: renamed}), other)
    with pytest.raises(PathalignError) as e:
        embed_with_model(model, other, tmp_path / "emb.h5", progress=False)
    msg = str(e.value)
    state = json.loads((model / "config.json").read_text())["preprocessing"][modality]
    assert f"model's {modality} features" in msg and f"0 of {len(state['features'])}" in msg, msg
    assert state["features"][0] in msg and "Hint" in msg and len(msg.splitlines()) == 1
    assert len(state["features"]) <= n
    assert not (tmp_path / "emb.h5").exists()


def test_version_suffixes_and_symbol_entrez_are_matched_to_the_same_embeddings(molecular_model, tmp_path):
    cohort, model, tmp = molecular_model
    ref = _embed(model, cohort, tmp_path / "ref.h5")
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", rna_names=[f"ENSG{i:011d}" for i in range(N_GENES)],  # versions dropped
                       cnv_names=[f"GENE{i}" for i in range(N_GENES)]), other)  # SYMBOL, not SYMBOL|ENTREZ
    got = _embed(model, other, tmp_path / "emb.h5")
    for m in ("rna", "cnv", "methylation"):
        assert got[m]["ids"] == ref[m]["ids"]
        np.testing.assert_allclose(got[m]["embeddings"], ref[m]["embeddings"], rtol=1e-5, atol=1e-6)
        assert not got[m]["imputed_fraction"].any()
    assert got["_attrs"]["feature_overlap"]["rna"]["renamed"] > 0


def test_partial_overlap_warns_and_records_imputed_fraction(molecular_model, tmp_path):
    cohort, model, tmp = molecular_model
    state = json.loads((model / "config.json").read_text())["preprocessing"]["methylation"]
    rng = seeded_rng()
    names = [f"cg{i:08d}" for i in range(N_PROBES)]
    gone = set(rng.choice(names, N_PROBES // 3, replace=False).tolist())
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", meth_names=[f"zz{n}" if n in gone else n for n in names]), other)
    summary = embed_with_model(model, other, tmp_path / "emb.h5", progress=False)
    expected = sum(f in gone for f in state["features"]) / len(state["features"])  # no NaN in the table
    assert any("methylation" in w and "imputed" in w for w in summary.warnings), summary.warnings
    got = read_embeddings(tmp_path / "emb.h5")
    np.testing.assert_allclose(got["methylation"]["imputed_fraction"], expected, rtol=1e-6)
    assert not got["rna"]["imputed_fraction"].any()
    with h5py.File(tmp_path / "emb.h5") as fh:
        assert fh["methylation/imputed_fraction"].dtype == np.float32
        assert fh["methylation/imputed_fraction"].shape == (N_PATIENTS,)


def test_imputed_fraction_counts_missing_values_per_patient(molecular_model, tmp_path):
    """NaN in the table (not a missing column) count per patient too."""
    cohort, model, tmp = molecular_model
    state = json.loads((model / "config.json").read_text())["preprocessing"]["rna"]
    folder = write_tables(tmp_path / "in")
    rna = pd.read_csv(folder / "rna.tsv", sep="\t", index_col=0)
    rna.iloc[:N_GENES // 2, 0] = np.nan  # the first patient lacks half the genes
    rna.to_csv(folder / "rna.tsv", sep="\t")
    other = tmp_path / "other"
    build(folder, other)
    embed_with_model(model, other, tmp_path / "emb.h5", progress=False)
    got = read_embeddings(tmp_path / "emb.h5")["rna"]
    lacking = set(rna.index[:N_GENES // 2])
    expected = sum(f in lacking for f in state["features"]) / len(state["features"])
    assert got["imputed_fraction"][0] == pytest.approx(expected)
    assert not got["imputed_fraction"][1:].any()


def test_inputs_match_the_training_view_when_names_are_the_model_s(molecular_model):
    from pathalign import load_model
    from pathalign.cohort import load_cohort
    from pathalign.cohort.model_view import CohortData
    from pathalign.evaluate.molecular_inputs import molecular_inputs
    from pathalign.models.preprocessing import MODEL_TRANSFORMS

    cohort_path, model_path, _ = molecular_model
    model, cohort = load_model(model_path), load_cohort(cohort_path)
    data = CohortData(cohort, None, ["rna", "cnv", "methylation"], preprocessing=model.preprocessing,
                      transforms=MODEL_TRANSFORMS)
    for m in ("rna", "cnv", "methylation"):
        inp = molecular_inputs(model, cohort, m)
        rows = np.flatnonzero(data.valid[m])
        assert inp.ids == [data.ids[i] for i in rows]
        np.testing.assert_array_equal(inp.x, data.arrays[m][rows])


def test_embed_takes_the_features_folders_cohort_build_takes(tmp_path, capsys):
    from cohort_tables import slides_cohort
    from pathalign.cli import main
    from pathalign.io.features import read_patch_features

    root = tmp_path / "preprocess"  # `pathalign preprocess --out preprocess` writes features_<encoder>/ in it
    cohort, sids, feats = slides_cohort(tmp_path, features=root / "features_pathalign-stats", features_option=root)
    expected = {s: read_patch_features(feats / f"{s}.h5").features.astype(np.float32).mean(0) for s in sids}
    for args in (["--features", str(root)], ["--cohort", str(cohort.path)]):  # the root; the cohort's folder
        out = tmp_path / "emb.h5"
        assert main(["embed", "--mean-pool", *args, "--out", str(out), "--name", ""]) == 0, capsys.readouterr().err
        got = read_embeddings(out)["wsi"]
        assert sorted(got["ids"]) == sorted(sids)
        for sid, e in zip(got["ids"], got["embeddings"]):
            np.testing.assert_allclose(e, expected[sid], rtol=1e-6)
    assert got["case_ids"] == [s[:-3] for s in got["ids"]]  # the cohort gives each slide's patient
    assert main(["embed", "--mean-pool", "--out", str(tmp_path / "x.h5")]) == 2
    assert "needs --features DIR (or --cohort" in capsys.readouterr().err
