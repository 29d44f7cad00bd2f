"""``pathalign cohort build``: align clinical data, slides and molecular tables by patient.

Output folder::

    manifest.parquet      one row per patient: case_id, clinical columns, has_<modality>, slide_ids
    <modality>.parquet    patients x features, raw aligned values (rna, snp, cnv, methylation)
    cohort.json           sources, units, the feature vocabulary per modality, dropped samples
    report.md             counts per modality and overlap, drops and why, missing-value rates
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.atomic import atomic_write_df, atomic_write_json, atomic_write_text
from ..modalities import MODALITIES, MOLECULAR
from .ids import CohortInputError, Drop, IdRule, assign_patients, source_name
from .readers import read_matrix, read_maf, read_table

RNA_UNITS = ("tpm", "counts", "fpkm", "log2tpm", "log2fpkm")
CNV_KINDS = ("gistic", "log2")


@dataclass
class CohortSources:
    """Inputs of ``cohort build``; every modality optional."""

    clinical: str | None = None
    slides: str | None = None
    features: str | None = None
    rna: str | None = None
    rna_units: str = "tpm"
    gene_lengths: str | None = None
    maf: list[str] = field(default_factory=list)
    cnv: str | None = None
    cnv_kind: str = "gistic"
    methylation: str | None = None
    orientation: str = "auto"
    id_rule: str = "tcga"
    id_map: str | None = None
    case_col: str = "case_id"

    def __post_init__(self):
        if self.rna_units not in RNA_UNITS:
            raise CohortInputError(f"--rna-units must be one of {RNA_UNITS}, got {self.rna_units!r}")
        if self.cnv_kind not in CNV_KINDS:
            raise CohortInputError(f"--cnv-kind must be one of {CNV_KINDS}, got {self.cnv_kind!r}")
        if self.rna_units == "counts" and not self.gene_lengths:
            raise CohortInputError("--rna-units counts needs --gene-lengths FILE (gene, length in bp) to make TPM")
        if not any([self.rna, self.maf, self.cnv, self.methylation, self.slides]):
            raise CohortInputError("nothing to build: give at least one of --slides, --rna, --maf, --cnv, --methylation")


def _read_clinical(path: str, case_col: str) -> pd.DataFrame:
    df = read_table(path)
    if case_col not in df.columns:
        raise CohortInputError(f"{path}: no '{case_col}' column (columns: {list(df.columns)[:8]})")
    df[case_col] = df[case_col].astype(str).str.strip()
    dup = df[df[case_col].duplicated(keep=False)]
    if len(dup):
        rows = ", ".join(str(i + 2) for i in dup.index[:6])
        raise CohortInputError(f"{path}: patient {dup[case_col].iat[0]!r} appears more than once (rows {rows})")
    return df.rename(columns={case_col: "case_id"}).set_index("case_id", drop=False)


def _read_slides(path: str, features_dir: str | None, case_col: str, drops: list[Drop]) -> pd.DataFrame:
    df = read_table(path)
    for col in ("slide_id", case_col):
        if col not in df.columns:
            raise CohortInputError(f"{path}: no '{col}' column")
    df = df.rename(columns={case_col: "case_id"})
    df["case_id"] = df["case_id"].astype(str).str.strip()
    df["slide_id"] = df["slide_id"].astype(str).str.strip()
    if features_dir is not None:
        from ..slides.features_io import is_complete

        ok = [is_complete(Path(features_dir) / f"{s}.h5") for s in df.slide_id]
        for s, good in zip(df.slide_id, ok):
            if not good:
                drops.append(Drop(source_name(path), s, f"no complete features file in {features_dir}"))
        df = df[np.array(ok, bool)]
    return df


def _to_patients(mat: pd.DataFrame, rule: IdRule, source: str, drops: list[Drop]) -> pd.DataFrame:
    chosen, new_drops = assign_patients(list(mat.index), rule, source)
    drops.extend(new_drops)
    out = mat.loc[list(chosen.values())]
    out.index = pd.Index(list(chosen.keys()), name="case_id")
    return out


def build_cohort(src: CohortSources, out: str | Path, progress: bool = True) -> "Cohort":
    """Build a cohort folder from ``src`` (see module docstring); returns it loaded."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rule = IdRule.from_args(src.id_rule, src.id_map)
    drops: list[Drop] = []
    matrices: dict[str, pd.DataFrame] = {}
    if src.rna:
        matrices["rna"] = _to_patients(read_matrix(src.rna, rule, src.orientation), rule, source_name(src.rna), drops)
    if src.maf:
        maf = read_maf(src.maf)
        matrices["snp"] = _to_patients(maf, rule, ",".join(source_name(p) for p in src.maf), drops)
    if src.cnv:
        matrices["cnv"] = _to_patients(read_matrix(src.cnv, rule, src.orientation), rule, source_name(src.cnv), drops)
    if src.methylation:
        matrices["methylation"] = _to_patients(read_matrix(src.methylation, rule, src.orientation), rule,
                                               source_name(src.methylation), drops)
    slides = _read_slides(src.slides, src.features, src.case_col, drops) if src.slides else None

    if src.clinical:
        clinical = _read_clinical(src.clinical, src.case_col)
        patients = list(clinical.index)
    else:
        found = set().union(*[set(m.index) for m in matrices.values()], set(slides.case_id) if slides is not None else set())
        patients = sorted(found)
        clinical = pd.DataFrame({"case_id": patients}, index=pd.Index(patients))
    known = set(patients)
    for mod, mat in list(matrices.items()):
        unknown = [p for p in mat.index if p not in known]
        drops.extend(Drop(mod, p, "patient not in the clinical table") for p in unknown)
        matrices[mod] = mat.loc[[p for p in patients if p in mat.index]]
    slide_ids: dict[str, list[str]] = {p: [] for p in patients}
    if slides is not None:
        for s, p in zip(slides.slide_id, slides.case_id):
            if p in slide_ids:
                slide_ids[p].append(s)
            else:
                drops.append(Drop("slides", s, f"patient {p} not in the clinical table"))

    manifest = clinical.reset_index(drop=True).copy()
    manifest["has_wsi"] = [len(slide_ids[p]) > 0 for p in patients]
    for mod in MOLECULAR:
        manifest[f"has_{mod}"] = [p in matrices[mod].index for p in patients] if mod in matrices else False
    manifest["slide_ids"] = [slide_ids[p] for p in patients]
    manifest["n_modalities"] = manifest[[f"has_{m}" for m in MODALITIES]].sum(axis=1)

    for mod, mat in matrices.items():
        mat = mat.copy()
        mat.columns = mat.columns.astype(str)
        atomic_write_df(mat, out / f"{mod}.parquet", index=True)
    for mod in MOLECULAR:  # a stale matrix from an earlier build must not survive
        if mod not in matrices and (out / f"{mod}.parquet").exists():
            (out / f"{mod}.parquet").unlink()
    atomic_write_df(manifest, out / "manifest.parquet")
    meta = {
        "sources": {k: v for k, v in vars(src).items() if v},
        "units": {"rna": src.rna_units, "cnv": src.cnv_kind, "methylation": "beta", "snp": "binary"},
        "features": {mod: list(map(str, mat.columns)) for mod, mat in matrices.items()},
        "slides_dir": str(Path(src.features).resolve()) if src.features else None,
        "dropped": [vars(d) for d in drops],
    }
    if src.gene_lengths:
        gl = read_table(src.gene_lengths)
        meta["gene_lengths"] = dict(zip(gl.iloc[:, 0].astype(str), gl.iloc[:, 1].astype(float)))
    atomic_write_json(meta, out / "cohort.json")
    atomic_write_text(render_report(manifest, matrices, drops), out / "report.md")
    if progress:
        counts = ", ".join(f"{m} {int(manifest[f'has_{m}'].sum())}" for m in MODALITIES)
        print(f"cohort: {len(manifest)} patients ({counts}); {len(drops)} samples dropped; see {out / 'report.md'}")
    return load_cohort(out)


def render_report(manifest: pd.DataFrame, matrices: dict[str, pd.DataFrame], drops: list[Drop]) -> str:
    """The QC report (Markdown)."""
    lines = ["# Cohort report", "", f"{len(manifest)} patients.", "", "## Patients per modality", "",
             "| modality | patients | features | missing values |", "|---|---|---|---|"]
    for mod in MODALITIES:
        n = int(manifest[f"has_{mod}"].sum())
        if mod in matrices:
            mat = matrices[mod]
            miss = float(mat.isna().to_numpy().mean()) if mat.size else 0.0
            lines.append(f"| {mod} | {n} | {mat.shape[1]} | {miss:.2%} |")
        else:
            lines.append(f"| {mod} | {n} | — | — |")
    lines += ["", "## Patients by number of modalities", "", "| modalities | patients |", "|---|---|"]
    for k, v in manifest.n_modalities.value_counts().sort_index().items():
        lines.append(f"| {k} | {v} |")
    lines += ["", "## Overlaps (patients with both)", ""]
    present = [m for m in MODALITIES if manifest[f"has_{m}"].any()]
    lines += ["| | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for a in present:
        row = [str(int((manifest[f"has_{a}"] & manifest[f"has_{b}"]).sum())) for b in present]
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    combos = manifest[[f"has_{m}" for m in present]].apply(lambda r: "+".join(m for m in present if r[f"has_{m}"]), axis=1)
    lines += ["", "## Modality combinations", "", "| combination | patients |", "|---|---|"]
    for k, v in combos.value_counts().items():
        lines.append(f"| {k or 'none'} | {v} |")
    lines += ["", f"## Dropped samples ({len(drops)})", ""]
    if drops:
        lines += ["| source | sample | reason |", "|---|---|---|"]
        lines += [f"| {d.source} | {d.sample} | {d.reason} |" for d in drops]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


class Cohort:
    """A built cohort folder: ``.manifest`` and ``.matrix(modality)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "manifest.parquet").is_file():
            raise CohortInputError(f"{self.path}: not a cohort folder (no manifest.parquet); run 'pathalign cohort build'")
        self.manifest = pd.read_parquet(self.path / "manifest.parquet")
        self.manifest["slide_ids"] = self.manifest["slide_ids"].apply(lambda v: [str(s) for s in v])
        meta_path = self.path / "cohort.json"
        import json

        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self._cache: dict[str, pd.DataFrame] = {}

    @property
    def modalities(self) -> list[str]:
        """Modalities at least one patient has."""
        return [m for m in MODALITIES if f"has_{m}" in self.manifest and self.manifest[f"has_{m}"].any()]

    def matrix(self, modality: str) -> pd.DataFrame:
        """Patients x features raw aligned values of ``modality`` (rna, snp, cnv, methylation)."""
        if modality not in MOLECULAR:
            raise KeyError(f"unknown molecular modality {modality!r}; one of {MOLECULAR}")
        if modality not in self._cache:
            path = self.path / f"{modality}.parquet"
            if not path.is_file():
                raise KeyError(f"{self.path}: the cohort has no {modality} data")
            self._cache[modality] = pd.read_parquet(path)
        return self._cache[modality]

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        counts = ", ".join(f"{m}={int(self.manifest[f'has_{m}'].sum())}" for m in MODALITIES if f"has_{m}" in self.manifest)
        return f"Cohort({self.path}, {len(self)} patients: {counts})"


def load_cohort(path: str | Path) -> Cohort:
    """Open a cohort folder written by ``pathalign cohort build``."""
    return Cohort(path)
