"""``pathalign cohort build``: align clinical data, slides and molecular tables by patient.

Output folder::

    manifest.parquet      one row per patient: case_id, clinical columns, has_<modality>, slide_ids
    <modality>.h5         patients x features, raw aligned values as float32 (rna, snp, cnv, methylation;
                          ``pathalign.io.matrix_store``: read back in memory proportional to what is read)
    cohort.json           build id and file list, sources, units, the feature vocabulary per
                          modality, dropped samples, warnings
    report.md             warnings, counts per modality and overlap, the clinical table (header rows dropped,
                          what was read as missing per column, negative/missing survival times by patient),
                          GISTIC features, drops and why, missing-value rates

The folder is written complete or absent and every file carries the build id (:mod:`pathalign.io.cohort_folder`,
which also reads it back: ``Cohort``, ``load_cohort``);
the input rules (units, ids, duplicates, features folder) are in docs/cohort.md.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .checks import METHYLATION_UNITS, check_values, drop_empty_samples, feature_notes
from .clinical import DECIMALS, ClinicalTable, read_clinical_table, render_clinical
from ..io.cohort_folder import (Cohort, load_cohort, new_build_id, staged_folder, write_matrix_frame, write_meta,
                                write_parquet)
from ..modalities import MODALITIES, MOLECULAR
from .gistic import read_gistic_folder
from .ids import CohortInputError, Drop, IdRule, assign_patients, clean_id, files_by_stem, source_name
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
    rna_pseudocount: float = 1.0
    gene_lengths: str | None = None
    maf: list[str] = field(default_factory=list)
    cnv: str | None = None
    cnv_kind: str = "gistic"
    methylation: str | None = None
    methylation_units: str = "beta"
    orientation: str = "auto"
    id_rule: str = "tcga"
    id_map: str | None = None
    case_col: str = "case_id"
    decimal: str = "auto"

    def __post_init__(self):
        if self.rna_units not in RNA_UNITS:
            raise CohortInputError(f"--rna-units must be one of {RNA_UNITS}, got {self.rna_units!r}")
        if not (np.isfinite(self.rna_pseudocount) and self.rna_pseudocount > 0):
            raise CohortInputError(f"--rna-pseudocount must be a positive number, got {self.rna_pseudocount!r}")
        if self.rna_pseudocount != 1 and not self.rna_units.startswith("log2"):
            raise CohortInputError(f"--rna-pseudocount needs --rna-units log2tpm or log2fpkm (values log2(x + p)); "
                                   f"got --rna-units {self.rna_units}")
        if self.decimal not in DECIMALS:
            raise CohortInputError(f"--decimal must be one of {DECIMALS}, got {self.decimal!r}")
        if self.methylation_units not in METHYLATION_UNITS:
            raise CohortInputError(f"--methylation-units must be one of {METHYLATION_UNITS}, "
                                   f"got {self.methylation_units!r}")
        if self.cnv_kind not in CNV_KINDS:
            raise CohortInputError(f"--cnv-kind must be one of {CNV_KINDS}, got {self.cnv_kind!r}")
        if self.rna_units == "counts" and not self.gene_lengths:
            raise CohortInputError("--rna-units counts needs --gene-lengths FILE (gene, length in bp) to make TPM")
        if self.features and not self.slides:
            raise CohortInputError("--features needs --slides (a table with slide_id and case_id): "
                                   "without it no slide is attached to a patient")
        if not any([self.rna, self.maf, self.cnv, self.methylation, self.slides]):
            raise CohortInputError("nothing to build: give at least one of --slides, --rna, --maf, --cnv, --methylation")


def _read_clinical(path: str, case_col: str, rule: IdRule, decimal: str = "auto") -> ClinicalTable:
    """The clinical table, typed and cleaned (:mod:`.clinical`), indexed by ``case_id``."""
    return read_clinical_table(path, case_col, rule, decimal)


def resolve_features_dir(path: str | Path) -> tuple[Path, str | None]:
    """The folder of ``<slide_id>.h5`` features that ``path`` names, and a note when it was looked up.

    ``path`` itself when it holds ``.h5`` files; else its one ``features_<encoder>/`` subfolder
    holding them, one or two levels down (``preprocess`` output: ``DIR/features_<encoder>/``;
    Trident job: ``JOB/<mag>x_<ps>px_<overlap>px_overlap/features_<encoder>/``).

    Raises:
        CohortInputError: no such folder, no features files there, or several candidate subfolders.
    """
    path = Path(path)
    if not path.is_dir():
        raise CohortInputError(f"--features {path}: no such folder")
    if any(path.glob("*.h5")):
        return path, None
    found = sorted({d for d in [*path.glob("features_*"), *path.glob("*/features_*")]
                    if d.is_dir() and any(d.glob("*.h5"))})
    if len(found) == 1:
        return found[0], f"--features {path} holds no .h5 files; using its subfolder {found[0]}"
    if found:
        raise CohortInputError(f"--features {path} holds no .h5 files but {len(found)} features folders: "
                               f"{', '.join(str(d) for d in found)}; give the one to use")
    raise CohortInputError(f"--features {path}: no .h5 features files here nor in a features_<encoder>/ subfolder "
                           "(give the folder that holds <slide_id>.h5)")


def features_dir_for(features: str | None, cohort: str | Path | None, mode: str) -> tuple[str | None, str | None]:
    """The features folder a verb reads (``embed``): ``features`` as :func:`resolve_features_dir` reads it, else
    the folder ``cohort`` recorded when it was built.

    Args:
        features: ``--features``: the folder of ``<slide_id>.h5``, or a ``preprocess`` output holding one
            ``features_<encoder>/`` subfolder.
        cohort: the cohort folder whose recorded features folder is used when ``features`` is not given.
        mode: what needs the folder (``--mean-pool``, ``--slide-encoder``; ``--model`` can do without), for the
            error message.

    Returns:
        ``(folder, note)``: the folder, or None with neither given under ``--model`` (which then uses the
        cohort's); the note of :func:`resolve_features_dir` when the folder was looked up, else None.

    Raises:
        CohortInputError: neither given where one is needed, a cohort that records none, or a folder without
            features files.
    """
    if features:
        path, note = resolve_features_dir(features)
        return str(path), note
    if cohort:
        recorded = load_cohort(cohort).meta.get("slides_dir")
        if recorded:
            return str(recorded), None
        if mode != "--model":
            raise CohortInputError(f"{mode}: the cohort {cohort} records no features folder (built without "
                                   "--features); give --features DIR")
    elif mode != "--model":
        raise CohortInputError(f"{mode} needs --features DIR (or --cohort, whose features folder is used)")
    return None, None


def _read_slides(path: str, features_dir: Path | None, case_col: str, rule: IdRule, drops: list[Drop],
                 warnings: list[str]) -> pd.DataFrame:
    df = read_table(path)
    for col in ("slide_id", case_col):
        if col not in df.columns:
            raise CohortInputError(f"{path}: no '{col}' column")
    df = df.rename(columns={case_col: "case_id"})
    df["case_id"] = df["case_id"].map(rule.normalise_case)
    df["slide_id"] = df["slide_id"].map(clean_id)
    owners = df.groupby("slide_id", sort=False)["case_id"].unique()
    shared = owners[owners.apply(len) > 1]
    if len(shared):
        raise CohortInputError(f"{path}: slide {shared.index[0]!r} is listed under {len(shared.iat[0])} patients "
                               f"({', '.join(shared.iat[0])}); a slide belongs to one patient"
                               + (f" ({len(shared)} slides like this)" if len(shared) > 1 else ""))
    repeated = df.slide_id.duplicated()
    drops.extend(Drop(source_name(path), s, "listed twice for the same patient; kept once")
                 for s in df.slide_id[repeated])
    df = df[~repeated]
    if features_dir is not None:
        from ..io.features import is_complete

        on_disk = files_by_stem(features_dir, ".h5")  # NFC stem -> the stem as the file system spells it
        respelled = [s for s in df.slide_id if s in on_disk and on_disk[s] != s]
        if respelled:
            df["slide_id"] = [on_disk.get(s, s) for s in df.slide_id]
            warnings.append(f"{len(respelled)} slide ids of {source_name(path)} match their features file only after "
                            f"Unicode normalisation (NFC; e.g. {respelled[0]!r}); the manifest uses the file's spelling")
        ok = np.array([is_complete(features_dir / f"{s}.h5") for s in df.slide_id], bool)
        for s in df.slide_id[~ok]:
            drops.append(Drop(source_name(path), s, f"no complete features file in {features_dir}"))
        if len(df) and not ok.any():
            held = sorted(p.name for p in features_dir.glob("*.h5"))[:3]
            raise CohortInputError(f"{path}: none of its {len(df)} slides has a complete features file in "
                                   f"{features_dir} (expected e.g. {df.slide_id.iat[0]}.h5; the folder holds "
                                   f"{', '.join(held) or 'no .h5 files'})")
        if (~ok).any():
            warnings.append(f"{int((~ok).sum())} of {len(df)} slides listed in {source_name(path)} have no complete "
                            f"features file in {features_dir} (named under dropped samples)")
        df = _drop_zero_patch_slides(df[ok], features_dir, source_name(path), drops, warnings)
    return df


def _drop_zero_patch_slides(df: pd.DataFrame, features_dir: Path, source: str, drops: list[Drop],
                            warnings: list[str]) -> pd.DataFrame:
    """Slides whose features file has no patch (no tissue found) are dropped and reported: not counted as slides."""
    from ..io.feature_checks import ZERO_PATCHES, patch_count

    empty = np.array([patch_count(features_dir / f"{s}.h5") == 0 for s in df.slide_id], bool)
    if not empty.any():
        return df
    drops.extend(Drop(source, s, ZERO_PATCHES) for s in df.slide_id[empty])
    warnings.append(f"{int(empty.sum())} of {len(df)} slides listed in {source} have {ZERO_PATCHES} and are not "
                    f"counted as slides (named under dropped samples)")
    return df[~empty]


def _read_modality(path: str, modality: str, units: str, rule: IdRule, orientation: str, drops: list[Drop],
                   warnings: list[str], pseudocount: float = 1.0, sections: list[str] | None = None,
                   decimal: str = "point") -> pd.DataFrame:
    """Read, check against the unit's rules (``checks``), drop empty samples, then one sample per patient.

    A folder given as ``--cnv`` is read as a GISTIC 2 output folder (:mod:`.gistic`).
    """
    name = source_name(path)
    if modality == "cnv" and Path(path).is_dir():
        calls = read_gistic_folder(path)
        mat = calls.values
        if sections is not None:
            sections.extend(calls.report())
    else:
        mat = read_matrix(path, rule, orientation, drops, decimal)
    if mat.shape[1] == 0:
        raise CohortInputError(f"{name}: {modality} holds no feature")
    mat, notes = check_values(mat, modality, units, name, pseudocount)
    warnings.extend(notes)
    out = _to_patients(drop_empty_samples(mat, name, drops), rule, name, drops)
    _feature_checks(out, modality, name, warnings, sections)
    return out


def _feature_checks(mat: pd.DataFrame, modality: str, name: str, warnings: list[str],
                    sections: list[str] | None) -> None:
    """Constant and duplicate features: warnings, or report lines where duplicates are expected."""
    notes, info = feature_notes(mat, modality, name)
    warnings.extend(notes)
    if info and sections is not None:
        sections.extend([f"## Feature checks: {modality}", "", *(f"- {line}" for line in info), ""])


def _to_patients(mat: pd.DataFrame, rule: IdRule, source: str, drops: list[Drop]) -> pd.DataFrame:
    chosen, new_drops = assign_patients(list(mat.index), rule, source)
    drops.extend(new_drops)
    out = mat.loc[list(chosen.values())]
    out.index = pd.Index(list(chosen.keys()), name="case_id")
    return out


def _no_match(source: str, found: list[str], patients: list[str], clinical: str | None, drops: list[Drop]) -> str:
    """Why a source contributes no patient, for the error message."""
    if found:
        return (f"{source}: none of its {len(found)} patients (e.g. {', '.join(found[:2])}) is in "
                f"{source_name(clinical) if clinical else 'the cohort'} (e.g. {', '.join(patients[:2])}); "
                "check --case-col and --id-rule")
    reasons = pd.Series([d.reason for d in drops if d.source == source]).value_counts()
    why = "; ".join(f"{n} {r}" for r, n in reasons.head(3).items()) or "it holds no sample"
    return f"{source}: no sample is usable ({why})"


def build_cohort(src: CohortSources, out: str | Path, progress: bool = True) -> "Cohort":
    """Build a cohort folder from ``src`` (see module docstring); returns it loaded.

    The folder is written complete or not at all (:mod:`.folder`); inputs are checked by the
    rules of :mod:`.checks` and docs/cohort.md.

    Args:
        src: the inputs.
        out: the cohort folder (replaced when it holds an earlier cohort).
        progress: print a summary line and the warnings.

    Returns:
        The built cohort.

    Raises:
        CohortInputError: input that breaks a rule, a source that matches no patient, or an
            output folder that cannot be written.
    """
    out = Path(out)
    rule = IdRule.from_args(src.id_rule, src.id_map)
    drops: list[Drop] = []
    warnings: list[str] = []
    matrices: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    units = {"rna": src.rna_units, "cnv": src.cnv_kind, "methylation": src.methylation_units, "snp": "binary"}
    sections: list[str] = []
    for mod, path in (("rna", src.rna), ("cnv", src.cnv), ("methylation", src.methylation)):
        if path:
            matrices[mod] = _read_modality(path, mod, units[mod], rule, src.orientation, drops, warnings,
                                           src.rna_pseudocount if mod == "rna" else 1.0, sections, src.decimal)
            sources[mod] = source_name(path)
    if src.maf:
        sources["snp"] = ",".join(source_name(p) for p in src.maf)
        matrices["snp"] = _to_patients(read_maf(src.maf), rule, sources["snp"], drops)
        _feature_checks(matrices["snp"], "snp", sources["snp"], warnings, sections)
    features_dir = None
    if src.features:
        features_dir, note = resolve_features_dir(src.features)
        if note:
            warnings.append(note)
    slides = _read_slides(src.slides, features_dir, src.case_col, rule, drops, warnings) if src.slides else None

    if src.clinical:
        table = _read_clinical(src.clinical, src.case_col, rule, src.decimal)
        clinical = table.frame
        warnings.extend(table.warnings)
        drops.extend(table.dropped)
        sections[:0] = render_clinical(table)
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
        if len(matrices[mod]) == 0:
            raise CohortInputError(_no_match(sources[mod], list(mat.index), patients, src.clinical, drops))
    slide_ids: dict[str, list[str]] = {p: [] for p in patients}
    if slides is not None:
        for s, p in zip(slides.slide_id, slides.case_id):
            if p in slide_ids:
                slide_ids[p].append(s)
            else:
                drops.append(Drop("slides", s, f"patient {p} not in the clinical table"))
        if len(slides) and not any(slide_ids.values()):
            raise CohortInputError(_no_match(source_name(src.slides), list(dict.fromkeys(slides.case_id)), patients,
                                             src.clinical, drops))

    manifest = clinical.reset_index(drop=True).copy()
    manifest["has_wsi"] = [len(slide_ids[p]) > 0 for p in patients]
    for mod in MOLECULAR:
        manifest[f"has_{mod}"] = [p in matrices[mod].index for p in patients] if mod in matrices else False
    manifest["slide_ids"] = [slide_ids[p] for p in patients]
    manifest["n_modalities"] = manifest[[f"has_{m}" for m in MODALITIES]].sum(axis=1)
    if not manifest.n_modalities.any():
        raise CohortInputError("the cohort would be empty: no patient has any modality")

    build_id = new_build_id()
    files = ["manifest.parquet"] + [f"{mod}.h5" for mod in matrices]
    meta = {
        "sources": {k: v for k, v in vars(src).items() if v},
        # methylation is stored as beta and log RNA as log2(x + 1) whatever was declared
        "units": {**units, "methylation": "beta"},
        "features": {mod: list(map(str, mat.columns)) for mod, mat in matrices.items()},
        "slides_dir": str(features_dir.resolve()) if features_dir is not None else None,
        "dropped": [vars(d) for d in drops],
        "warnings": warnings,
    }
    if src.gene_lengths:
        gl = read_table(src.gene_lengths)
        meta["gene_lengths"] = dict(zip(gl.iloc[:, 0].astype(str), gl.iloc[:, 1].astype(float)))
    with staged_folder(out) as stage:
        for mod, mat in matrices.items():
            write_matrix_frame(mat, stage / f"{mod}.h5", build_id)
        write_parquet(manifest, stage / "manifest.parquet", build_id)
        (stage / "report.md").write_text(render_report(manifest, matrices, drops, warnings, build_id, sections))
        write_meta(stage, build_id, files, **meta)
    if progress:
        counts = ", ".join(f"{m} {int(manifest[f'has_{m}'].sum())}" for m in MODALITIES)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"cohort: {len(manifest)} patients ({counts}); {len(drops)} samples dropped; {len(warnings)} warnings; "
              f"see {out / 'report.md'}")
    return load_cohort(out)


def render_report(manifest: pd.DataFrame, matrices: dict[str, pd.DataFrame], drops: list[Drop],
                  warnings: list[str] | None = None, build_id: str = "", sections: list[str] | None = None) -> str:
    """The QC report (Markdown); ``sections`` (Markdown lines: clinical table, GISTIC) go before the drops."""
    lines = ["# Cohort report", "", f"{len(manifest)} patients. Build id `{build_id}`.", "", "## Warnings", ""]
    lines += [f"- {w}" for w in warnings] if warnings else ["None."]
    lines += ["", "## Patients per modality", "",
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
    if sections:
        lines += [""] + list(sections)
    lines += ["", f"## Dropped samples ({len(drops)})", ""]
    if drops:
        lines += ["| source | sample | reason |", "|---|---|---|"]
        lines += [f"| {d.source} | {d.sample} | {d.reason} |" for d in drops]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"
