"""Molecular readers, the TCGA id rule, cohort build on synth data, bad input."""
from __future__ import annotations

import csv
import gzip

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, REAL_DATA
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


def test_real_laml_maf_matches_an_independent_count():
    """maftools' TCGA-LAML MAF (shared/data/real): the gene x sample calls equal a plain pandas count of its
    non-silent rows (maftools' classes); every sequenced sample is a row, one with silent calls only (TCGA-AB-2903)
    a row of zeros: it was sequenced and has no non-silent mutation, which is not missing data."""
    maf = pd.read_csv(REAL_DATA / "laml" / "tcga_laml.maf.gz", sep="\t", comment="#", low_memory=False)
    kept = maf[maf.Variant_Classification.isin(NON_SILENT)]
    expected = set(zip(kept.Tumor_Sample_Barcode, kept.Hugo_Symbol))
    mat = read_maf(REAL_DATA / "laml" / "tcga_laml.maf.gz")
    stacked = mat.stack()
    got = {(s, g) for (s, g), v in stacked.items() if v == 1}
    assert got == expected and len(expected) > 1000
    assert set(mat.index) == set(maf.Tumor_Sample_Barcode) and mat.index.is_unique
    silent_only = set(maf.Tumor_Sample_Barcode) - set(kept.Tumor_Sample_Barcode)
    assert silent_only and (mat.loc[sorted(silent_only)] == 0).all(axis=None)


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


# ---- each silent wrong answer is an error or a named warning (docs/cohort.md) ----

P = [f"TCGA-AA-000{i}" for i in range(1, 5)]


def _matrix(path, samples, rows, transpose=False):
    """A Xena-style features x samples TSV (``rows``: feature -> values per sample); repeated samples allowed."""
    lines = ["\t".join(["gene", *samples])]
    lines += ["\t".join([g, *("NA" if v is None else str(v) for v in vals)]) for g, vals in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _clinical(path, ids):
    path.write_text("case_id\tlabel\n" + "".join(f"{p}\t{'ab'[i % 2]}\n" for i, p in enumerate(ids)))
    return str(path)


def _cli(argv, capsys):
    from pathalign.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_slide_listed_under_two_patients_is_an_error(tmp_path):
    (tmp_path / "slides.tsv").write_text("slide_id\tcase_id\nS1\tTCGA-AA-0001\nS2\tTCGA-AA-0002\nS1\tTCGA-AA-0003\n")
    rna = _matrix(tmp_path / "rna.tsv", [f"{p}-01A" for p in P[:3]], {"G1": [100, 200, 300]})
    with pytest.raises(CohortInputError, match=r"slides.tsv: slide 'S1' is listed under 2 patients "
                                               r"\(TCGA-AA-0001, TCGA-AA-0003\)"):
        build_cohort(CohortSources(slides=str(tmp_path / "slides.tsv"), rna=rna), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_all_nan_sample_is_not_present(tmp_path):
    # patient 1: only an all-NA sample; patient 2: an all-NA primary (01A) and a good 01B vial
    samples = [f"{P[0]}-01A", f"{P[1]}-01A", f"{P[1]}-01B", f"{P[2]}-01A"]
    meth = _matrix(tmp_path / "meth.tsv", samples, {"cg1": [None, None, 0.2, 0.5], "cg2": [None, None, 0.4, None]})
    cohort = build_cohort(CohortSources(clinical=_clinical(tmp_path / "clin.tsv", P[:3]), methylation=meth),
                          tmp_path / "c", progress=False)
    man = cohort.manifest.set_index("case_id")
    assert man.has_methylation.to_dict() == {P[0]: False, P[1]: True, P[2]: True}
    assert cohort.matrix("methylation").loc[P[1]].tolist() == np.float32([0.2, 0.4]).tolist()  # the good vial
    empty = {d["sample"] for d in cohort.meta["dropped"] if "all values missing" in d["reason"]}
    assert empty == {f"{P[0]}-01A", f"{P[1]}-01A"}
    assert f"{P[0]}-01A" in (tmp_path / "c" / "report.md").read_text()


@pytest.mark.parametrize("units", ["tpm", "fpkm", "counts", "log2tpm"])
def test_negative_rna_is_an_error_with_its_count(tmp_path, units):
    rng = np.random.default_rng(5)
    values = rng.gamma(2.0, 50.0, size=(10, 4))
    if units == "log2tpm":
        values = np.log2(values + 1)
    values[rng.random(values.shape) < 0.8] *= -1  # 80 % negative, as in the hostile case
    n_neg = int((values < 0).sum())
    rna = _matrix(tmp_path / "rna.tsv", [f"{p}-01A" for p in P], {f"G{i}": list(v) for i, v in enumerate(values)})
    (tmp_path / "len.tsv").write_text("gene\tlength\n" + "".join(f"G{i}\t1000\n" for i in range(10)))
    src = CohortSources(rna=rna, rna_units=units, gene_lengths=str(tmp_path / "len.tsv"))
    with pytest.raises(CohortInputError, match=rf"rna.tsv: {n_neg} of 40 observed values \(.*\) are negative"):
        build_cohort(src, tmp_path / "c", progress=False)


def test_log_units_given_linear_values_is_an_error_and_linear_given_log_a_warning(tmp_path):
    rna = _matrix(tmp_path / "rna.tsv", [f"{p}-01A" for p in P[:2]], {"G1": [5000.0, 12.5], "G2": [3.0, 0.0]})
    with pytest.raises(CohortInputError, match=r"declared log2tpm .* exceed 25 .* declare --rna-units tpm"):
        build_cohort(CohortSources(rna=rna, rna_units="log2tpm"), tmp_path / "c", progress=False)
    logged = _matrix(tmp_path / "log.tsv", [f"{p}-01A" for p in P[:2]], {"G1": [12.3, 3.5], "G2": [0.0, 7.25]})
    cohort = build_cohort(CohortSources(rna=logged), tmp_path / "c", progress=False)
    assert any("looks log-transformed" in w for w in cohort.meta["warnings"])
    assert "looks log-transformed" in (tmp_path / "c" / "report.md").read_text()


def test_methylation_in_percent_is_detected_and_converted_only_when_declared(tmp_path):
    pct = [[12.5, 80.0, None], [99.0, 0.0, 50.0]]
    meth = _matrix(tmp_path / "meth.tsv", [f"{p}-01A" for p in P[:3]], {"cg1": pct[0], "cg2": pct[1]})
    with pytest.raises(CohortInputError, match=r"meth.tsv: methylation declared beta \(0-1\) but 4 of 5 observed values .* "
                                               r"look like percent .* --methylation-units percent"):
        build_cohort(CohortSources(methylation=meth), tmp_path / "c", progress=False)
    cohort = build_cohort(CohortSources(methylation=meth, methylation_units="percent"), tmp_path / "c", progress=False)
    got = cohort.matrix("methylation").loc[P[:3], ["cg1", "cg2"]].to_numpy()
    want = np.array(pct, dtype=float).T / 100  # samples x probes
    np.testing.assert_allclose(got, want)
    assert cohort.meta["units"]["methylation"] == "beta"
    mvals = _matrix(tmp_path / "m.tsv", [f"{p}-01A" for p in P[:2]], {"cg1": [-2.5, 1.0], "cg2": [0.5, 0.1]})
    with pytest.raises(CohortInputError, match=r"1 of 4 observed values \(25.0%\) are outside it \(first at sample 'TCGA-AA-0001-01A', "
                                               r"feature 'cg1': -2.5\); they look like M-values.*--methylation-units mvalue"):
        build_cohort(CohortSources(methylation=mvals), tmp_path / "c2", progress=False)


def test_gistic_declared_but_ratios_given_is_an_error(tmp_path):
    cnv = _matrix(tmp_path / "cnv.tsv", [f"{p}-01A" for p in P[:2]], {"G1": [0.31, -1], "G2": [2, 0]})
    with pytest.raises(CohortInputError, match=r"cnv.tsv: declared GISTIC .* but 1 of 4 observed values .* --cnv-kind log2"):
        build_cohort(CohortSources(cnv=cnv), tmp_path / "c", progress=False)
    assert build_cohort(CohortSources(cnv=cnv, cnv_kind="log2"), tmp_path / "c", progress=False).matrix("cnv").shape == (2, 2)


def test_lower_case_clinical_ids_match_sample_ids(tmp_path, capsys):
    clin = _clinical(tmp_path / "clin.tsv", [p.lower() for p in P[:3]])
    (tmp_path / "slides.tsv").write_text("slide_id\tcase_id\n" + "".join(f"S{i}\t{p.lower()}\n" for i, p in enumerate(P[:3])))
    rna = _matrix(tmp_path / "rna.tsv", [f"{p}-01A" for p in P[:3]], {"G1": [100, 200, 300], "G2": [50, 60, 70]})
    cohort = build_cohort(CohortSources(clinical=clin, slides=str(tmp_path / "slides.tsv"), rna=rna),
                          tmp_path / "c", progress=False)
    assert cohort.manifest.case_id.tolist() == P[:3]
    assert cohort.manifest.has_rna.all() and cohort.manifest.has_wsi.all()
    assert cohort.matrix("rna")["G1"].to_dict() == {P[0]: 100.0, P[1]: 200.0, P[2]: 300.0}
    # mixed case within the clinical table is one patient twice
    (tmp_path / "dup.tsv").write_text(f"case_id\n{P[0]}\n{P[0].lower()}\n")
    with pytest.raises(CohortInputError, match=r"dup.tsv: patient 'TCGA-AA-0001' appears more than once"):
        build_cohort(CohortSources(clinical=str(tmp_path / "dup.tsv"), rna=rna), tmp_path / "c2", progress=False)


def test_repeated_sample_column_identical_is_merged_conflicting_is_an_error(tmp_path):
    s = [f"{P[0]}-01A", f"{P[1]}-01A", f"{P[0]}-01A"]
    same = _matrix(tmp_path / "same.tsv", s, {"G1": [100, 200, 100], "G2": [None, 7, None]})
    cohort = build_cohort(CohortSources(rna=same), tmp_path / "c", progress=False)
    assert cohort.matrix("rna")["G1"].to_dict() == {P[0]: 100.0, P[1]: 200.0}
    notes = [d for d in cohort.meta["dropped"] if d["sample"] == s[0]]
    assert len(notes) == 1 and "identical repeated sample" in notes[0]["reason"]
    diff = _matrix(tmp_path / "diff.tsv", s, {"G1": [100, 200, 100], "G2": [5, 7, 6]})
    with pytest.raises(CohortInputError, match=rf"diff.tsv: sample '{s[0]}' appears 2 times with different values "
                                               r"\(1 features differ, e.g. 'G2': 5.0, 6.0\)"):
        build_cohort(CohortSources(rna=diff), tmp_path / "c2", progress=False)
    # samples as rows: the same rule
    (tmp_path / "rows.tsv").write_text(f"sample\tG1\n{s[0]}\t1\n{s[1]}\t2\n{s[0]}\t3\n")
    with pytest.raises(CohortInputError, match=rf"rows.tsv: sample '{s[0]}' appears 2 times"):
        read_matrix(tmp_path / "rows.tsv", IdRule("tcga"))


def test_clinical_ids_matching_nothing_is_an_error(tmp_path, capsys):
    clin = _clinical(tmp_path / "clin.tsv", ["PAT-1", "PAT-2"])
    rna = _matrix(tmp_path / "rna.tsv", [f"{p}-01A" for p in P[:2]], {"G1": [100, 200]})
    with pytest.raises(CohortInputError, match=r"rna.tsv: none of its 2 patients \(e.g. TCGA-AA-0001, TCGA-AA-0002\) "
                                               r"is in clin.tsv \(e.g. PAT-1, PAT-2\)"):
        build_cohort(CohortSources(clinical=clin, rna=rna), tmp_path / "c", progress=False)
    rc, err = _cli(["cohort", "build", "--out", str(tmp_path / "c"), "--clinical", clin, "--rna", rna], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "rna.tsv: none of its 2 patients" in err, err
    assert not (tmp_path / "c").exists()
    # a source whose every sample is dropped contributes nothing either
    normals = _matrix(tmp_path / "normal.tsv", [f"{p}-11A" for p in P[:2]], {"G1": [100, 200]})
    with pytest.raises(CohortInputError, match=r"normal.tsv: no sample is usable \(2 not a tumour sample"):
        build_cohort(CohortSources(rna=normals), tmp_path / "c", progress=False)


def _preprocess_like(root, slides, encoder="pathalign-stats"):
    from pathalign.io.features import write_patch_file

    rng = np.random.default_rng(0)
    for s in slides:
        coords = np.array([[0, 0], [256, 0]])
        for sub, feats in (("coords", None), (f"features_{encoder}", rng.standard_normal((2, 4)).astype(np.float32))):
            write_patch_file(root / sub / f"{s}.h5", coords, np.zeros(2, int), {"patch_size_level0": 256}, feats)
    return root


def test_features_folder_of_preprocess_output_is_found_and_missing_slides_reported(tmp_path, capsys):
    listed = [f"{p}-01Z-00-DX1" for p in P]
    (tmp_path / "slides.tsv").write_text("slide_id\tcase_id\n" + "".join(f"{s}\t{s[:12]}\n" for s in listed))
    out = _preprocess_like(tmp_path / "pre", listed[:3])  # the 4th slide has no features
    cohort = build_cohort(CohortSources(clinical=_clinical(tmp_path / "clin.tsv", P), slides=str(tmp_path / "slides.tsv"),
                                        features=str(out)), tmp_path / "c", progress=False)
    assert cohort.meta["slides_dir"] == str((out / "features_pathalign-stats").resolve())
    assert cohort.manifest.set_index("case_id").has_wsi.to_dict() == {P[0]: True, P[1]: True, P[2]: True, P[3]: False}
    assert any("using its subfolder" in w for w in cohort.meta["warnings"])
    assert any("1 of 4 slides listed in slides.tsv have no complete features file" in w for w in cohort.meta["warnings"])
    assert [d["sample"] for d in cohort.meta["dropped"] if "features" in d["reason"]] == [listed[3]]
    # a folder whose files name no listed slide: an error, not an empty slide modality
    empty = _preprocess_like(tmp_path / "other", ["X1", "X2"])
    rc, err = _cli(["cohort", "build", "--out", str(tmp_path / "c2"), "--slides", str(tmp_path / "slides.tsv"),
                    "--features", str(empty)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "none of its 4 slides has a complete features file" in err and "X1.h5" in err
    with pytest.raises(CohortInputError, match=r"--features needs --slides"):
        CohortSources(features=str(out), rna="x.tsv")
    # two encoders' features: ask which
    _preprocess_like(tmp_path / "pre", listed[:1], encoder="other")
    with pytest.raises(CohortInputError, match=r"holds no .h5 files but 2 features folders"):
        build_cohort(CohortSources(slides=str(tmp_path / "slides.tsv"), features=str(out)), tmp_path / "c3",
                     progress=False)


# ---- a cohort folder is complete or absent ----

def _two_builds(tmp_path):
    clin = _clinical(tmp_path / "clin.tsv", P)
    a = _matrix(tmp_path / "a.tsv", [f"{p}-01A" for p in P], {"G1": [1.0, 2, 3, 4], "G2": [5.0, 6, 7, 8]})
    b = _matrix(tmp_path / "b.tsv", [f"{p}-01A" for p in P[:2]], {"G1": [10.0, 20], "G3": [30.0, 40]})
    return CohortSources(clinical=clin, rna=a), CohortSources(clinical=clin, rna=b)


def test_rebuild_killed_midway_leaves_the_previous_cohort_whole(tmp_path):
    import subprocess
    import sys

    src_a, src_b = _two_builds(tmp_path)
    out = tmp_path / "cohort"
    first = build_cohort(src_a, out, progress=False)
    rna_a, man_a = first.matrix("rna"), first.manifest
    # rebuild with other data in a process killed (SIGKILL) after its matrix, as it writes its Parquet manifest
    script = f"""
import os, signal, pyarrow.parquet as pq
from pathalign.cohort import CohortSources, build_cohort
real, calls = pq.write_table, []
def write_then_die(*a, **k):
    real(*a, **k)
    calls.append(1)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
pq.write_table = write_then_die
build_cohort(CohortSources(clinical={src_b.clinical!r}, rna={src_b.rna!r}), {str(out)!r}, progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    again = load_cohort(out)
    pd.testing.assert_frame_equal(again.matrix("rna"), rna_a)
    pd.testing.assert_frame_equal(again.manifest, man_a)
    # the next build replaces it whole and clears the dead build's leftovers
    build_cohort(src_b, out, progress=False)
    assert load_cohort(out).matrix("rna").columns.tolist() == ["G1", "G3"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cohort")] == []


def test_load_refuses_incomplete_or_mixed_folders(tmp_path):
    import shutil

    src_a, src_b = _two_builds(tmp_path)
    build_cohort(src_a, tmp_path / "a", progress=False)
    build_cohort(src_b, tmp_path / "b", progress=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "b" / "rna.h5", mixed / "rna.h5")  # a matrix from another build
    with pytest.raises(CohortInputError, match=r"mixed/rna.h5: from another build .* the folder is mixed"):
        load_cohort(mixed)
    (mixed / "cohort.json").unlink()  # no marker: an interrupted build or an old layout
    with pytest.raises(CohortInputError, match=r"mixed: not a complete cohort folder \(no cohort.json"):
        load_cohort(mixed)
    (tmp_path / "a" / "rna.h5").unlink()
    with pytest.raises(CohortInputError, match=r"rna.h5 is listed in cohort.json but missing"):
        load_cohort(tmp_path / "a")
    # a folder that is not a cohort is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CohortInputError, match=r"mine: exists, is not empty and is not a cohort folder"):
        build_cohort(src_a, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
