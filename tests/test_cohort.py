"""Molecular readers, the TCGA id rule, cohort build on synth data, bad input."""
from __future__ import annotations

import csv
import gzip

import numpy as np
import pandas as pd
import pytest

from conftest import DATA
from pathalign.cohort import CohortInputError, CohortSources, IdRule, build_cohort, load_cohort, read_maf, read_matrix

NON_SILENT = {"Missense_Mutation", "Nonsense_Mutation", "Nonstop_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins",
              "In_Frame_Del", "In_Frame_Ins", "Splice_Site", "Translation_Start_Site"}


def test_real_tcga_maf_gene_set_is_exact():
    expected = set()
    with open(DATA / "tcga_single_sample.maf") as fh:
        rows = csv.DictReader((l for l in fh if not l.startswith("#")), delimiter="\t")
        barcodes = set()
        for r in rows:
            barcodes.add(r["Tumor_Sample_Barcode"])
            if r["Variant_Classification"] in NON_SILENT:
                expected.add(r["Hugo_Symbol"])
    mat = read_maf(DATA / "tcga_single_sample.maf")
    assert list(mat.index) == sorted(barcodes) and len(barcodes) == 1
    assert set(mat.columns[mat.iloc[0] == 1]) == expected
    assert (mat.to_numpy() == 1).all()  # no silent-only gene made a column


XENA = "gene\tTCGA-AA-0001-01A-11R-A1-07\tTCGA-AA-0002-01A-11R-A1-07\tTCGA-AA-0002-11A-11R-A1-07\nTP53\t1.5\t2\t9\nKRAS\t0\t3.25\t9\n"


@pytest.mark.parametrize("orientation", ["columns", "rows"])
@pytest.mark.parametrize("gz", [False, True])
def test_matrix_reader_both_orientations_and_gzip(tmp_path, orientation, gz):
    df = pd.read_csv(__import__("io").StringIO(XENA), sep="\t", index_col=0)
    if orientation == "rows":
        df = df.T
        df.index.name = "sample"
    path = tmp_path / ("m.tsv.gz" if gz else "m.tsv")
    df.to_csv(path, sep="\t", compression="gzip" if gz else None)
    mat = read_matrix(path, IdRule("tcga"))
    assert list(mat.columns) == ["TP53", "KRAS"]
    assert mat.loc["TCGA-AA-0002-01A-11R-A1-07"].tolist() == [2.0, 3.25]
    assert mat.shape == (3, 2)


def test_csv_and_parquet_matrices(tmp_path):
    df = pd.DataFrame({"probe": ["cg1", "cg2"], "TCGA-AB-0001-01A": [0.1, np.nan], "TCGA-AB-0002-01A": [0.5, 0.9]})
    df.to_csv(tmp_path / "m.csv", index=False)
    df.to_parquet(tmp_path / "m.parquet", index=False)
    for name in ("m.csv", "m.parquet"):
        mat = read_matrix(tmp_path / name, IdRule("tcga"))
        assert mat.loc["TCGA-AB-0001-01A", "cg1"] == 0.1
        assert np.isnan(mat.loc["TCGA-AB-0001-01A", "cg2"])


def test_maf_with_comments_and_silent_calls(tmp_path):
    path = tmp_path / "x.maf"
    path.write_text("#version 2.4\n#comment\nHugo_Symbol\tChromosome\tVariant_Classification\tTumor_Sample_Barcode\n"
                    "TP53\tchr17\tMissense_Mutation\tTCGA-AA-0001-01A-11D\n"
                    "TP53\tchr17\tNonsense_Mutation\tTCGA-AA-0001-01A-11D\n"
                    "KRAS\tchr12\tSilent\tTCGA-AA-0001-01A-11D\n"
                    "KRAS\tchr12\tMissense_Mutation\tTCGA-AA-0002-01A-11D\n"
                    "APC\tchr5\tIntron\tTCGA-AA-0003-01A-11D\n")
    mat = read_maf(path)
    assert list(mat.columns) == ["KRAS", "TP53"]
    assert mat.to_dict("index") == {
        "TCGA-AA-0001-01A-11D": {"KRAS": 0.0, "TP53": 1.0},
        "TCGA-AA-0002-01A-11D": {"KRAS": 1.0, "TP53": 0.0},
        "TCGA-AA-0003-01A-11D": {"KRAS": 0.0, "TP53": 0.0},  # profiled, nothing non-silent
    }


def test_tcga_rule_drops_normals_and_keeps_first_vial(tmp_path):
    path = tmp_path / "rna.tsv"
    path.write_text("gene\tTCGA-AA-0001-01B-11R\tTCGA-AA-0001-01A-11R\tTCGA-AA-0001-11A-11R\tTCGA-AA-0002-01A-11R\n"
                    "G1\t1\t2\t3\t4\n")
    cohort = build_cohort(CohortSources(rna=str(path)), tmp_path / "c", progress=False)
    rna = cohort.matrix("rna")
    assert rna.to_dict()["G1"] == {"TCGA-AA-0001": 2.0, "TCGA-AA-0002": 4.0}
    reasons = {d["sample"]: d["reason"] for d in cohort.meta["dropped"]}
    assert "not a tumour sample" in reasons["TCGA-AA-0001-11A-11R"]
    assert "duplicate" in reasons["TCGA-AA-0001-01B-11R"]
    report = (tmp_path / "c" / "report.md").read_text()
    assert "TCGA-AA-0001-11A-11R" in report


def test_table_id_rule(tmp_path):
    (tmp_path / "map.tsv").write_text("sample_id\tcase_id\nS1\tP1\nS2\tP2\n")
    (tmp_path / "m.tsv").write_text("gene\tS1\tS2\tS3\nG\t1\t2\t3\n")
    cohort = build_cohort(CohortSources(rna=str(tmp_path / "m.tsv"), id_rule="table", id_map=str(tmp_path / "map.tsv")),
                          tmp_path / "c", progress=False)
    assert cohort.matrix("rna")["G"].to_dict() == {"P1": 1.0, "P2": 2.0}
    assert any(d["sample"] == "S3" for d in cohort.meta["dropped"])


def test_cohort_build_on_synth_matches_truth(small_synth, tmp_path):
    syn, truth = small_synth
    cohort = build_cohort(CohortSources(clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"),
                                        rna=str(syn / "rna_tpm.tsv.gz"), maf=[str(syn / "mutations.maf")],
                                        cnv=str(syn / "cnv_gistic.tsv"), methylation=str(syn / "methylation_beta.tsv.gz")),
                          tmp_path / "cohort", progress=False)
    again = load_cohort(tmp_path / "cohort")
    man = again.manifest.set_index("case_id").loc[truth.case_id]
    for mod in ("wsi", "rna", "snp", "cnv", "methylation"):
        assert (man[f"has_{mod}"].to_numpy() == truth[f"has_{mod}"].to_numpy()).all(), mod
    assert man.slide_ids.apply(len).tolist() == truth.n_slides.tolist()
    assert (man.n_modalities >= 2).all()
    assert list(again.matrix("rna").index) == [c for c, h in zip(truth.case_id, truth.has_rna) if h]
    meth = again.matrix("methylation")
    assert meth.isna().any().any()  # NA kept as NA, not turned into numbers
    orphans = [d for d in again.meta["dropped"] if "clinical" in d["reason"]]
    assert len(orphans) == 2


def test_bad_inputs_name_the_file_row_or_column(tmp_path):
    (tmp_path / "noid.tsv").write_text("gene\tfoo\tbar\nG1\t1\t2\n")
    with pytest.raises(CohortInputError, match="noid.tsv.*no axis holds sample ids"):
        read_matrix(tmp_path / "noid.tsv", IdRule("tcga"))
    (tmp_path / "bad.maf").write_text("#x\nHugo_Symbol\tTumor_Sample_Barcode\nTP53\tTCGA-AA-0001-01A\n")
    with pytest.raises(CohortInputError, match="bad.maf.*Variant_Classification"):
        read_maf(tmp_path / "bad.maf")
    (tmp_path / "text.tsv").write_text("gene\tTCGA-AA-0001-01A\tTCGA-AA-0002-01A\nG1\t1\t2\nG2\t3\thigh\n")
    with pytest.raises(CohortInputError, match=r"text.tsv: non-numeric value 'high' at row 3 \('G2'\), column 'TCGA-AA-0002-01A'"):
        read_matrix(tmp_path / "text.tsv", IdRule("tcga"))
    (tmp_path / "clin.tsv").write_text("case_id\tlabel\nTCGA-AA-0001\ta\nTCGA-AA-0002\tb\nTCGA-AA-0001\tc\n")
    (tmp_path / "ok.tsv").write_text("gene\tTCGA-AA-0001-01A\tTCGA-AA-0009-01A\nG1\t1\t2\n")
    with pytest.raises(CohortInputError, match=r"clin.tsv: patient 'TCGA-AA-0001' appears more than once \(rows 2, 4\)"):
        build_cohort(CohortSources(clinical=str(tmp_path / "clin.tsv"), rna=str(tmp_path / "ok.tsv")), tmp_path / "c")
    (tmp_path / "clin.tsv").write_text("case_id\tlabel\nTCGA-AA-0001\ta\nTCGA-AA-0002\tb\n")
    cohort = build_cohort(CohortSources(clinical=str(tmp_path / "clin.tsv"), rna=str(tmp_path / "ok.tsv")),
                          tmp_path / "c", progress=False)
    assert cohort.matrix("rna").index.tolist() == ["TCGA-AA-0001"]  # the good patient is kept
    assert any(d["sample"] == "TCGA-AA-0009" and "clinical" in d["reason"] for d in cohort.meta["dropped"])
    assert cohort.manifest.has_rna.tolist() == [True, False]


def test_synth_is_deterministic_for_a_seed(tmp_path):
    from pathalign.synth import SynthConfig, generate_cohort

    cfg = SynthConfig(patients=6, seed=11, slide_size=512, genes=50, probes=30, mutation_genes=12, cnv_genes=24)
    generate_cohort(tmp_path / "a", cfg, workers=2, progress=False)
    generate_cohort(tmp_path / "b", cfg, workers=1, progress=False)
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for name in names:
        if name.suffix == ".gz":  # gzip headers carry a timestamp: compare the content
            assert gzip.open(tmp_path / "a" / name).read() == gzip.open(tmp_path / "b" / name).read(), name
        elif name.suffix != ".parquet":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "truth.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "truth.parquet"))
    other = generate_cohort(tmp_path / "c", SynthConfig(patients=6, seed=12, slide_size=512, genes=50, probes=30,
                                                        mutation_genes=12, cnv_genes=24), workers=1, progress=False)
    assert other.case_id.tolist() != pd.read_parquet(tmp_path / "a" / "truth.parquet").case_id.tolist()
