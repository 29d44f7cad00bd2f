"""Clinical and molecular tables as GDC, Firehose, Xena and R ship them (docs/cohort.md).

The hostile variants are small files written here in the shapes of the real ones; the real
files under ``../shared/data/real`` (its README) are read where they are small, and those tests
are skipped with the reason when the folder is absent.
"""
from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd
import pytest

from conftest import REAL_DATA
from pathalign.cohort import CohortInputError, CohortSources, build_cohort

REAL = REAL_DATA
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"needs the real TCGA files of ../shared/data/real "
                                                          f"(not found at {REAL}; see its README)")
P = [f"TCGA-AA-000{i}" for i in range(1, 6)]


def _matrix(path, samples, rows):
    """A Xena-style features x samples TSV (``rows``: feature -> values per sample)."""
    lines = ["\t".join(["gene", *samples])]
    lines += ["\t".join([g, *("NA" if v is None else str(v) for v in vals)]) for g, vals in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _rna(tmp_path, patients, name="rna.tsv"):
    rng = np.random.default_rng(0)
    rows = {f"G{j}": list(np.round(rng.uniform(1, 500, len(patients)), 2)) for j in range(4)}
    return _matrix(tmp_path / name, [f"{p}-01A" for p in patients], rows)


def _build(tmp_path, name="c", **kw):
    return build_cohort(CohortSources(**kw), tmp_path / name, progress=False)


# ---- clinical tables: Biotab header rows, missing-value markers, numbers ----

BIOTAB = (
    "bcr_patient_uuid\tbcr_patient_barcode\tgender\tbirth_days_to\tvital_status\tdeath_days_to\t"
    "last_contact_days_to\tajcc_pathologic_tumor_stage\tcea_level_pretreatment\n"
    "bcr_patient_uuid\tbcr_patient_barcode\tgender\tdays_to_birth\tvital_status\tdays_to_death\t"
    "days_to_last_followup\tpathologic_stage\tpreoperative_pretreatment_cea_level\n"
    "CDE_ID:\tCDE_ID:2673794\tCDE_ID:2200604\tCDE_ID:3008233\tCDE_ID:5\tCDE_ID:3165475\tCDE_ID:3008273\t"
    "CDE_ID:3203222\tCDE_ID:2716510\n"
    "A1\tTCGA-AA-0001\tFEMALE\t-22379\tAlive\t[Not Applicable]\t154\tStage IIA\t[Not Available]\n"
    "A2\tTCGA-AA-0002\tMALE\t-24523\tDead\t812\t[Not Available]\tStage IIIB\t2.0\n"
    "A3\tTCGA-AA-0003\t[Unknown]\t[Not Available]\tAlive\t[Not Applicable]\t40\t[Discrepancy]\t1.5\n"
    "A4\tTCGA-AA-0004\tMALE\t-19000\tAlive\t[Not Applicable]\t[Not Evaluated]\tStage I\t--\n"
)


def test_biotab_header_rows_are_dropped_markers_are_missing_and_numbers_are_numbers(tmp_path):
    (tmp_path / "clin.tsv").write_text(BIOTAB)
    cohort = _build(tmp_path, clinical=str(tmp_path / "clin.tsv"), case_col="bcr_patient_barcode",
                    rna=_rna(tmp_path, P[:4]))
    m = cohort.manifest.set_index("case_id")
    assert list(m.index) == P[:4]  # the two header rows are not patients
    for col in ("birth_days_to", "death_days_to", "last_contact_days_to", "cea_level_pretreatment"):
        assert pd.api.types.is_float_dtype(m[col]), (col, m[col].dtype)
    assert m.death_days_to.isna().tolist() == [True, False, True, True]
    assert m.cea_level_pretreatment.tolist()[1:3] == [2.0, 1.5]
    assert m.gender.isna().tolist() == [False, False, True, False]
    assert m.ajcc_pathologic_tumor_stage.isna().sum() == 1
    every = [str(v) for v in m.drop(columns=["slide_ids"]).to_numpy().ravel()]
    assert not any(v.startswith("[") or v == "--" for v in every)
    report = (cohort.path / "report.md").read_text()
    assert "2 header rows" in report and "CDE_ID" in report
    # the report says what was read as missing, per column
    assert "| death_days_to | 3 | [Not Applicable] ×3 |" in report
    assert "| cea_level_pretreatment | 2 | [Not Available] ×1, -- ×1 |" in report


@pytest.mark.parametrize("marker", ["NA", "N/A", "'--", "--", "not reported", "Not Reported", "unknown", "",
                                    "[Not Available]", "[Unknown]"])
def test_every_documented_marker_is_missing_never_a_class(tmp_path, marker):
    from pathalign.cohort.clinical import MISSING_MARKERS

    assert marker in MISSING_MARKERS or marker == ""
    (tmp_path / "clin.tsv").write_text("case_id\tsubtype\n" + f"{P[0]}\tLumA\n{P[1]}\t{marker}\n{P[2]}\tBasal\n")
    cohort = _build(tmp_path, clinical=str(tmp_path / "clin.tsv"), rna=_rna(tmp_path, P[:3]))
    assert cohort.manifest.subtype.isna().tolist() == [False, True, False]


def test_decimal_comma_numbers_are_detected_and_can_be_declared(tmp_path):
    (tmp_path / "clin.tsv").write_text(
        "case_id\tpurity\tcount\tlabel\n"
        f"{P[0]}\t0,7886\t1,234\ta\n{P[1]}\t0,93\t2,500\tb\n{P[2]}\tNaN\t3,000\ta\n{P[3]}\t1\t4,100\tb\n")
    rna = _rna(tmp_path, P[:4])
    c = _build(tmp_path, clinical=str(tmp_path / "clin.tsv"), rna=rna)
    m = c.manifest
    assert pd.api.types.is_float_dtype(m.purity)
    np.testing.assert_allclose(m.purity.to_numpy(), [0.7886, 0.93, np.nan, 1.0])
    # "1,234" may be a thousands separator: not guessed, kept as written, with a warning naming the column
    assert m["count"].tolist() == ["1,234", "2,500", "3,000", "4,100"]
    assert any("count" in w and "--decimal comma" in w for w in c.meta["warnings"])
    # declared: every column reads the comma as the decimal mark
    d = _build(tmp_path, "c3", clinical=str(tmp_path / "clin.tsv"), rna=rna, decimal="comma").manifest
    np.testing.assert_allclose(d["count"].to_numpy(), [1.234, 2.5, 3.0, 4.1])


@needs_real
def test_real_biotab_patient_table(tmp_path):
    path = REAL / "messy" / "tcga_coad_biotab_clinical_patient.tsv"
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    ids = list(raw.bcr_patient_barcode[2:6])
    cohort = _build(tmp_path, clinical=str(path), case_col="bcr_patient_barcode", rna=_rna(tmp_path, ids))
    m = cohort.manifest
    assert len(m) == len(raw) - 2 == 459
    assert not m.case_id.str.startswith(("CDE_ID", "BCR_")).any()
    for col in ("death_days_to", "last_contact_days_to", "birth_days_to", "lymph_nodes_examined_count"):
        assert pd.api.types.is_numeric_dtype(m[col]), col
    text = [str(v) for v in m.select_dtypes(exclude="number").drop(columns=["slide_ids"]).to_numpy().ravel()]
    assert not any(v.startswith("[") and v.endswith("]") for v in text)
    # a value kept equals the file's
    row = raw.iloc[2]
    got = m.set_index("case_id").loc[row.bcr_patient_barcode, "birth_days_to"]
    assert got == float(row.birth_days_to)


@needs_real
def test_real_purity_table_with_decimal_commas(tmp_path):
    from pathalign.cohort.clinical import read_clinical_table
    from pathalign.cohort.ids import IdRule

    path = REAL / "messy" / "tcga_tumor_purity_decimal_comma.tsv"
    df = read_clinical_table(path, "Sample.ID", IdRule("table")).frame  # ids as written: every row
    raw = pd.read_csv(path, sep="\t", dtype=str)
    assert len(df) == len(raw) == 9364
    for col in ("ESTIMATE", "ABSOLUTE", "LUMP", "IHC", "CPE"):
        assert pd.api.types.is_float_dtype(df[col]), col
        want = pd.to_numeric(raw[col].str.replace(",", "."), errors="coerce").to_numpy()
        np.testing.assert_array_equal(df[col].to_numpy(), want)
    assert not pd.api.types.is_numeric_dtype(df["Cancer.type"])
    # under the tcga rule: one row per patient with a tumour sample
    per_patient = read_clinical_table(path, "Sample.ID", IdRule("tcga"))
    tumour = raw["Sample.ID"][raw["Sample.ID"].str[13:15].astype(int).between(1, 9)]
    assert len(per_patient.frame) == tumour.str[:12].nunique()
    assert len(per_patient.frame) + len(per_patient.dropped) == len(raw)


# ---- survival times ----

def test_negative_and_missing_survival_times_are_reported_by_patient_and_column(tmp_path):
    (tmp_path / "clin.tsv").write_text(
        "case_id\tOS_days\tOS_event\tage\n"
        f"{P[0]}\t300\t1\t50\n{P[1]}\t-7\t0\t60\n{P[2]}\tNA\t1\t70\n{P[3]}\t120\t0\t-1\n{P[4]}\t-7\t0\t40\n")
    cohort = _build(tmp_path, clinical=str(tmp_path / "clin.tsv"), rna=_rna(tmp_path, P))
    m = cohort.manifest.set_index("case_id")
    report = (cohort.path / "report.md").read_text()
    for p in (P[1], P[4]):
        assert f"| {p} | OS_days | -7 |" in report
        assert np.isnan(m.loc[p, "OS_days"])  # left out of survival tasks
    assert f"| {P[2]} | OS_days | missing |" in report
    assert m.loc[P[3], "age"] == -1  # not a survival column: untouched
    assert any("OS_days" in w and "2 negative" in w for w in cohort.meta["warnings"])


@needs_real
def test_real_brca_survival_negative_times(tmp_path):
    path = REAL / "brca" / "tcga_brca_ov_overall_survival.tsv"
    cohort = _build(tmp_path, clinical=str(path), case_col="bcr_patient_barcode",
                    rna=_rna(tmp_path, ["TCGA-3C-AAAU", "TCGA-E9-A1NI"]))
    report = (cohort.path / "report.md").read_text()
    assert "| TCGA-E9-A1NI | times | -7 |" in report and "| TCGA-PL-A8LV | times | -7 |" in report


# ---- molecular feature QC ----

def test_constant_and_duplicate_features_are_reported(tmp_path):
    samples = [f"{p}-01A" for p in P[:4]]
    rna = _matrix(tmp_path / "rna.tsv", samples, {"G1": [1, 2, 3, 4], "FLAT": [5, 5, 5, 5], "G2": [7, 1, 9, 2],
                                                 "G2copy": [7, 1, 9, 2], "G3": [3, None, 1, 8]})
    cohort = _build(tmp_path, rna=rna)
    text = " ".join(cohort.meta["warnings"])
    assert "1 constant feature" in text and "FLAT" in text
    assert "1 feature duplicates another" in text and "G2copy = G2" in text
    assert "G3" not in text


# ---- ids: R-style dots, Unicode normalisation ----

def test_r_style_dotted_barcodes_are_read_under_the_tcga_rule(tmp_path):
    from pathalign.cohort.ids import IdRule

    rule = IdRule("tcga")
    assert rule.patient_of("TCGA.KL.8323.01A.11R.2315.07") == ("TCGA-KL-8323", None)
    assert rule.patient_of("TCGA.KL.8323.11A")[0] is None  # a normal stays a normal
    assert rule.normalise_case("tcga.kl.8323") == "TCGA-KL-8323"
    ids = ["TCGA-KL-8323", "TCGA-KL-8324"]
    (tmp_path / "clin.tsv").write_text("case_id\tlabel\nTCGA.KL.8323\ta\nTCGA.KL.8324\tb\n")
    rna = _matrix(tmp_path / "rna.tsv", ["TCGA.KL.8323.01A.11R.2315.07", "TCGA.KL.8324.01A.11R.2315.07"],
                  {"G1": [1, 2], "G2": [3, 4]})
    m = _build(tmp_path, clinical=str(tmp_path / "clin.tsv"), rna=rna).manifest
    assert m.case_id.tolist() == ids and m.has_rna.all()


def test_decomposed_unicode_names_match_composed_ids(tmp_path):
    from pathalign.io.features import write_patch_file

    nfc = unicodedata.normalize("NFC", "biopsie-é-1")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    feats = tmp_path / "feats"
    write_patch_file(feats / f"{nfd}.h5", np.array([[0, 0], [256, 0]]), np.zeros(2, int), {"patch_size_level0": 256},
                     np.zeros((2, 4), np.float32))
    (tmp_path / "slides.tsv").write_text(f"slide_id\tcase_id\n{nfc}\t{P[0]}\n")
    cohort = _build(tmp_path, slides=str(tmp_path / "slides.tsv"), features=str(feats), rna=_rna(tmp_path, P[:2]))
    m = cohort.manifest.set_index("case_id")
    assert m.loc[P[0], "has_wsi"]
    slide = m.loc[P[0], "slide_ids"][0]
    assert (feats / f"{slide}.h5").is_file()  # the id the trainer opens names the file on disk
    # patient ids under a mapping table: NFC on both sides
    from pathalign.cohort.ids import IdRule

    (tmp_path / "map.tsv").write_text(f"sample_id\tcase_id\ns1\t{nfc}\n")
    rule = IdRule.from_args("table", str(tmp_path / "map.tsv"))
    assert rule.patient_of("s1") == (nfc, None)
    assert rule.normalise_case(nfd) == nfc


# ---- a MAF with only silent calls ----

def _maf(path, rows):
    cols = ["Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode"]
    path.write_text("#version 2.4\n" + "\t".join(cols) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return str(path)


def test_maf_with_only_silent_calls_names_the_modality_and_file(tmp_path):
    maf = _maf(tmp_path / "silent.maf", [("TP53", "Silent", f"{P[0]}-01A"), ("KRAS", "Intron", f"{P[1]}-01A"),
                                         ("EGFR", "3'UTR", f"{P[1]}-01A")])
    with pytest.raises(CohortInputError, match=r"silent.maf.*mutations \(snp\).*no non-silent call.*Silent 1"):
        _build(tmp_path, maf=[maf])
    assert not (tmp_path / "c").exists()


@needs_real
def test_real_chol_maf_silent_only_variant(tmp_path):
    maf = pd.read_csv(REAL / "messy" / "tcga_chol_somatic.maf", sep="\t", comment="#", dtype=str, low_memory=False)
    assert (maf.Variant_Classification == "Silent").any()
    maf[maf.Variant_Classification == "Silent"].to_csv(tmp_path / "chol_silent.maf", sep="\t", index=False)
    with pytest.raises(CohortInputError, match=r"chol_silent.maf.*mutations \(snp\)"):
        _build(tmp_path, maf=[str(tmp_path / "chol_silent.maf")])
    # the real file builds
    c = _build(tmp_path, "c2", maf=[str(REAL / "messy" / "tcga_chol_somatic.maf")])
    assert c.matrix("snp").shape[1] > 0


# ---- methylation: M-values, rounding, centred beta ----

def test_methylation_m_values_declared_become_beta(tmp_path):
    rng = np.random.default_rng(1)
    m_values = np.round(rng.normal(0, 2.5, (3, 4)), 6)  # probes x samples
    samples = [f"{p}-01A" for p in P[:4]]
    meth = _matrix(tmp_path / "m.tsv", samples, {f"cg{i}": list(m_values[i]) for i in range(3)})
    with pytest.raises(CohortInputError, match=r"M-values.*--methylation-units mvalue"):
        _build(tmp_path, methylation=meth)
    c = _build(tmp_path, methylation=meth, methylation_units="mvalue")
    want = 1.0 / (1.0 + np.exp2(-m_values.T))  # Du et al. 2010: beta = 2^M / (2^M + 1)
    np.testing.assert_allclose(c.matrix("methylation").to_numpy(), want, rtol=1e-6)  # stored as float32
    assert c.meta["units"]["methylation"] == "beta"


def test_beta_rounding_is_accepted_and_clipped_and_messages_keep_their_digits(tmp_path):
    samples = [f"{p}-01A" for p in P[:3]]
    meth = _matrix(tmp_path / "b.tsv", samples, {"cg1": [1.0000001, 0.5, -1e-9], "cg2": [0.2, 0.3, 0.4]})
    c = _build(tmp_path, methylation=meth)
    vals = c.matrix("methylation").to_numpy()
    assert vals.max() == 1.0 and vals.min() == 0.0
    bad = _matrix(tmp_path / "bad.tsv", samples, {"cg1": [1.00200001, 0.5, 0.1], "cg2": [0.2, 0.3, 0.4]})
    with pytest.raises(CohortInputError) as e:
        _build(tmp_path, "c2", methylation=bad)
    assert "1.00200001" in str(e.value)


def test_centred_beta_is_not_called_m_values(tmp_path):
    rng = np.random.default_rng(2)
    beta = rng.uniform(0, 1, (3, 4)) - 0.5
    samples = [f"{p}-01A" for p in P[:4]]
    meth = _matrix(tmp_path / "c.tsv", samples, {f"cg{i}": list(beta[i]) for i in range(3)})
    with pytest.raises(CohortInputError) as e:
        _build(tmp_path, methylation=meth)
    assert "M-values" not in str(e.value) and "beta - 0.5" in str(e.value)


# ---- log2 RNA with another pseudocount ----

def test_log2_rna_with_a_declared_pseudocount(tmp_path):
    rng = np.random.default_rng(3)
    tpm = np.round(rng.lognormal(1, 2, (5, 4)), 3)
    tpm[0, :2] = 0.0  # zeros: log2(0.001) ~ -9.97
    log2_toil = np.log2(tpm + 0.001)
    samples = [f"{p}-01A" for p in P[:4]]
    rna = _matrix(tmp_path / "toil.tsv", samples, {f"G{i}": [f"{v:.10f}" for v in log2_toil[i]] for i in range(5)})
    with pytest.raises(CohortInputError, match=r"--rna-pseudocount"):
        _build(tmp_path, rna=rna, rna_units="log2tpm")
    c = _build(tmp_path, rna=rna, rna_units="log2tpm", rna_pseudocount=0.001)
    # stored as log2(TPM + 1), the unit the cohort records
    np.testing.assert_allclose(c.matrix("rna").to_numpy(), np.log2(tpm.T + 1), atol=1e-8)
    assert c.meta["units"]["rna"] == "log2tpm"
    # a value below log2(pseudocount) is still an error
    low = _matrix(tmp_path / "low.tsv", samples, {"G0": [-12, 1, 2, 3], "G1": [1, 2, 3, 4]})
    with pytest.raises(CohortInputError, match=r"below log2\(0.001\)"):
        _build(tmp_path, "c2", rna=low, rna_units="log2tpm", rna_pseudocount=0.001)
    with pytest.raises(CohortInputError, match=r"--rna-pseudocount needs --rna-units log2"):
        CohortSources(rna=rna, rna_units="tpm", rna_pseudocount=0.001)


# ---- GISTIC 2 output folders ----

def _lesions(path, samples, amp_calls, del_calls):
    """An all_lesions.conf_90.txt in GISTIC 2's layout: thresholded rows, then '- CN values' rows."""
    meta = ["Unique Name", "Descriptor", "Wide Peak Limits", "Peak Limits", "Region Limits", "q values",
            "Residual q values after removing segments shared with higher peaks", "Broad or Focal",
            "Amplitude Threshold"]
    rows = ["\t".join(meta + samples) + "\t"]
    peaks = [("Amplification Peak 1", "8q24.21", amp_calls, "0: t<0.1; 1: 0.1<t< 0.9; 2: t>0.9"),
             ("Deletion Peak  1", "9p21.3 ", del_calls, "0: t>-0.1; 1: -0.1>t> -1.3; 2: t< -1.3")]
    for name, band, calls, thr in peaks:
        rows.append("\t".join([name, band, "chr8:1-2(probes 1:2)", "x", "x", "0.01", "0.01", "", thr,
                               *map(str, calls)]) + "\t")
    for name, band, calls, _ in peaks:
        rows.append("\t".join([f"{name} - CN values", band, "x", "x", "x", "0.01", "0.01", "",
                               "Actual Copy Change Given", *(f"{0.3 * c:.3f}" for c in calls)]) + "\t")
    path.write_text("\n".join(rows) + "\n")


def test_gistic_folder_with_lesions_only(tmp_path):
    samples = [f"{p}-03A-01D-0756-21" for p in P[:4]]
    g = tmp_path / "gistic"
    g.mkdir()
    _lesions(g / "all_lesions.conf_90.txt", samples, [0, 1, 2, 0], [2, 0, 1, 1])
    (g / "scores.gistic").write_text("Type\tChromosome\tStart\tEnd\t-log10(q-value)\tG-score\taverage amplitude\t"
                                     "frequency\nAmp\t 1\t1\t100\t0.1\t0.02\t0.7\t0.03\n")
    (g / "amp_genes.conf_90.txt").write_text("cytoband\t8q24.21\t\nq value\t0.01\t\ngenes in wide peak\tMYC\t\n")
    c = _build(tmp_path, cnv=str(g))
    mat = c.matrix("cnv")
    assert list(mat.columns) == ["amp_8q24.21", "del_9p21.3"]
    np.testing.assert_array_equal(mat.to_numpy(), np.array([[0, 1, 2, 0], [-2, 0, -1, -1]]).T)
    assert c.meta["units"]["cnv"] == "gistic"
    report = (c.path / "report.md").read_text()
    assert "all_lesions.conf_90.txt" in report and "MYC" in report


def test_gistic_folder_prefers_gene_level_calls(tmp_path):
    samples = [f"{p}-01A-11D-A00Z-01" for p in P[:3]]
    g = tmp_path / "gistic"
    g.mkdir()
    _lesions(g / "all_lesions.conf_99.txt", samples, [0, 1, 2], [2, 0, 1])
    (g / "all_thresholded.by_genes.txt").write_text(
        "Gene Symbol\tLocus ID\tCytoband\t" + "\t".join(samples) + "\n"
        "MYC\t4609\t8q24.21\t2\t1\t0\nCDKN2A\t1029\t9p21.3\t-2\t0\t-1\n")
    mat = _build(tmp_path, cnv=str(g)).matrix("cnv")
    assert list(mat.columns) == ["MYC", "CDKN2A"]
    np.testing.assert_array_equal(mat.to_numpy(), np.array([[2, 1, 0], [-2, 0, -1]]).T)


def test_gistic_folder_without_sample_calls_is_an_error(tmp_path):
    g = tmp_path / "gistic"
    g.mkdir()
    (g / "scores.gistic").write_text("Type\tChromosome\tStart\tEnd\n")
    with pytest.raises(CohortInputError, match=r"gistic.*no per-sample calls.*scores.gistic"):
        _build(tmp_path, cnv=str(g))


@needs_real
def test_real_laml_gistic_folder(tmp_path):
    laml = REAL / "laml"
    c = _build(tmp_path, clinical=str(laml / "tcga_laml_annot.tsv"), case_col="Tumor_Sample_Barcode", cnv=str(laml))
    mat = c.matrix("cnv")
    raw = pd.read_csv(laml / "all_lesions.conf_99.txt", sep="\t")
    calls = raw[~raw["Amplitude Threshold"].str.contains("Actual Copy Change")]
    assert mat.shape[1] == len(calls) == 16
    assert sum(col.startswith("amp_") for col in mat.columns) == 4
    # one sample's values equal the file's, with deletions negative
    sample = "TCGA-AB-2803-03A-01D-0756-21"
    sign = np.where(calls["Unique Name"].str.startswith("Deletion"), -1, 1)
    np.testing.assert_array_equal(mat.loc["TCGA-AB-2803"].to_numpy(), sign * calls[sample].to_numpy())
    assert len(mat) >= 180


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicate_column_search_matches_pairwise_comparison(seed):
    from pathalign.cohort.checks import _duplicate_columns

    rng = np.random.default_rng(seed)
    values = rng.integers(-2, 3, (6, 120)).astype(float)  # few patients, discrete calls: many collisions
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:, 50:60] = values[:, 0:10]  # planted copies
    among = rng.random(120) < 0.9
    got = _duplicate_columns(values, among)
    want = {}
    cols = np.flatnonzero(among)
    for j in cols:
        for a in cols[cols < j]:
            if a not in want and np.array_equal(values[:, j], values[:, a], equal_nan=True):
                want[int(j)] = int(a)
                break
    assert got == want, f"seed={seed}"


def test_matrix_with_decimal_commas_names_the_option_and_reads_when_declared(tmp_path):
    samples = [f"{p}-01A" for p in P[:3]]
    meth = _matrix(tmp_path / "m.tsv", samples, {"cg1": ["0,25", "0,5", "NA"], "cg2": ["0,125", "1", "0"], "cg3": [0, 1, 0]})
    with pytest.raises(CohortInputError, match=r"non-numeric value '0,25'.*--decimal comma"):
        _build(tmp_path, methylation=meth)
    got = _build(tmp_path, methylation=meth, decimal="comma").matrix("methylation")
    np.testing.assert_array_equal(got.to_numpy(), [[0.25, 0.125, 0], [0.5, 1.0, 1], [np.nan, 0.0, 0]])


@needs_real
def test_real_laml_annotation_minus_inf_times_are_numbers_reported_as_negative(tmp_path):
    laml = REAL / "laml"
    raw = pd.read_csv(laml / "tcga_laml_annot.tsv", sep="\t")
    assert np.isneginf(raw.days_to_last_followup).sum() == 12  # pandas reads R's -Inf as -inf
    c = _build(tmp_path, clinical=str(laml / "tcga_laml_annot.tsv"), case_col="Tumor_Sample_Barcode", cnv=str(laml))
    m = c.manifest.set_index("case_id")
    assert pd.api.types.is_float_dtype(m.days_to_last_followup)
    bad = raw.Tumor_Sample_Barcode[np.isneginf(raw.days_to_last_followup)]
    assert m.loc[bad, "days_to_last_followup"].isna().all()
    report = (c.path / "report.md").read_text()
    assert all(f"| {p} | days_to_last_followup | -inf |" in report for p in bad)


def test_sample_level_clinical_table_is_read_per_patient(tmp_path):
    (tmp_path / "purity.tsv").write_text(
        "Sample.ID\tCPE\n"
        f"{P[0]}-01A\t0,9\n{P[0]}-06A\t0,5\n{P[1]}-11A\t0,1\n{P[1]}-01A\t0,7\n{P[2]}-01A\tNaN\n")
    c = _build(tmp_path, clinical=str(tmp_path / "purity.tsv"), case_col="Sample.ID", rna=_rna(tmp_path, P[:3]))
    m = c.manifest.set_index("case_id")
    assert list(m.index) == P[:3] and m.has_rna.all()
    np.testing.assert_allclose(m.CPE.to_numpy(), [0.9, 0.7, np.nan])  # primary tumour rows
    dropped = {d["sample"]: d["reason"] for d in c.meta["dropped"] if d["source"] == "purity.tsv"}
    assert set(dropped) == {f"{P[0]}-06A", f"{P[1]}-11A"}


def test_gistic_folder_of_normals_only_names_the_folder_and_why(tmp_path):
    g = tmp_path / "gistic"
    g.mkdir()
    _lesions(g / "all_lesions.conf_90.txt", [f"{p}-11A-01D-0756-21" for p in P[:2]], [0, 1], [1, 0])
    with pytest.raises(CohortInputError, match=r"gistic: no sample is usable \(2 not a tumour sample"):
        _build(tmp_path, cnv=str(g))


def test_cbioportal_clinical_header_rows_are_skipped_and_a_wrong_case_col_gets_a_hint(tmp_path):
    (tmp_path / "data_clinical_patient.txt").write_text(
        "#Patient Identifier\tSubtype\tOverall Survival (Months)\n"
        "#Identifier to uniquely specify a patient.\tSubtype\tOverall survival in months.\n"
        "#STRING\tSTRING\tNUMBER\n#1\t1\t1\n"
        "PATIENT_ID\tSUBTYPE\tOS_MONTHS\n"
        f"{P[0]}\tLumA\t12.5\n{P[1]}\t[Not Available]\t3\n{P[2]}\tBasal\tNA\n")
    c = _build(tmp_path, clinical=str(tmp_path / "data_clinical_patient.txt"), case_col="PATIENT_ID",
               rna=_rna(tmp_path, P[:3]))
    m = c.manifest.set_index("case_id")
    assert list(m.index) == P[:3] and m.SUBTYPE.isna().tolist() == [False, True, False]
    np.testing.assert_allclose(m.OS_MONTHS.to_numpy(), [12.5, 3.0, np.nan])
    with pytest.raises(CohortInputError, match=r"no 'case_id' column .*'PATIENT_ID': give --case-col"):
        _build(tmp_path, "c2", clinical=str(tmp_path / "data_clinical_patient.txt"), rna=_rna(tmp_path, P[:3]))


def test_gdc_focal_score_by_genes_with_an_id_map(tmp_path):
    g = tmp_path / "gdc_cnv"
    g.mkdir()
    aliquots = ["0a1b-uuid", "9f8e-uuid"]
    (g / "TCGA-COAD.focal_score_by_genes.txt").write_text(
        "Gene Symbol\tGene ID\tCytoband\t" + "\t".join(aliquots) + "\n"
        "ENSG00000136997.14\t4609\t8q24.21\t1\t0\nENSG00000147889.16\t1029\t9p21.3\t-1\t0\n")
    (tmp_path / "map.tsv").write_text(f"sample_id\tcase_id\n{aliquots[0]}\t{P[0]}\n{aliquots[1]}\t{P[1]}\n")
    c = _build(tmp_path, cnv=str(g), id_rule="table", id_map=str(tmp_path / "map.tsv"))
    mat = c.matrix("cnv")
    assert list(mat.columns) == ["ENSG00000136997.14", "ENSG00000147889.16"]
    np.testing.assert_array_equal(mat.loc[[P[0], P[1]]].to_numpy(), [[1, -1], [0, 0]])


def test_cli_options_reach_the_build(tmp_path, capsys):
    from pathalign.cli import main

    samples = [f"{p}-01A" for p in P[:3]]
    rna = _matrix(tmp_path / "rna.tsv", samples, {"G1": [-9.9658, 1, 2], "G2": [3, 4, 5]})  # log2(TPM + 0.001)
    meth = _matrix(tmp_path / "m.tsv", samples, {"cg1": [-3, 0, 2.5], "cg2": [1, -1, 0]})
    (tmp_path / "clin.tsv").write_text(f"case_id\tcount\n{P[0]}\t1,5\n{P[1]}\t2,25\n{P[2]}\t3,125\n")
    rc = main(["cohort", "build", "--out", str(tmp_path / "c"), "--clinical", str(tmp_path / "clin.tsv"),
               "--rna", rna, "--rna-units", "log2tpm", "--rna-pseudocount", "0.001", "--methylation", meth,
               "--methylation-units", "mvalue", "--decimal", "comma"])
    assert rc == 0, capsys.readouterr().err
    from pathalign.cohort import load_cohort

    c = load_cohort(tmp_path / "c")
    np.testing.assert_allclose(c.manifest["count"].to_numpy(), [1.5, 2.25, 3.125])
    np.testing.assert_allclose(c.matrix("methylation").loc[P[0], "cg1"], 1 / (1 + 2.0 ** 3))
    np.testing.assert_allclose(c.matrix("rna").loc[P[0], "G1"], np.log2(max(2 ** -9.9658 - 0.001, 0) + 1), atol=1e-9)


def test_log2_rna_rounded_at_the_floor_is_accepted_as_zero(tmp_path):
    samples = [f"{p}-01A" for p in P[:3]]
    rna = _matrix(tmp_path / "r.tsv", samples, {"G1": [-0.0004, 1, 2], "G2": [3, 4, 5]})  # log2(x + 1), rounded
    c = _build(tmp_path, rna=rna, rna_units="log2tpm")
    assert c.matrix("rna").loc[P[0], "G1"] == 0.0
    worse = _matrix(tmp_path / "w.tsv", samples, {"G1": [-0.01, 1, 2], "G2": [3, 4, 5]})
    with pytest.raises(CohortInputError, match=r"1 of 6 observed values .* are negative"):
        _build(tmp_path, "c2", rna=worse, rna_units="log2tpm")
