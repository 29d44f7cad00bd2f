"""Benchmark tasks: Patho-Bench split folders, or tasks derived from a cohort's clinical labels.

A task is a table of rows (``slide_id`` and/or ``case_id``), a label column (``task_col``; for
survival tasks the columns ``<task_col>_days`` / ``<task_col>_event``, e.g. ``PFS_days`` /
``PFS_event``, as Patho-Bench reads them) and folds ``fold_0..fold_K`` whose values are
``train``/``val``/``test``. ``sample_col`` is the unit scored (``slide_id`` or ``case_id``), as in
Patho-Bench's task YAML. A task that cannot be read or split keeps its name and an ``error``:
the benchmark reports it and runs the others.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PathalignError

TASK_TYPES = ("classification", "survival")
# Patho-Bench reads <task>_event / <task>_days for tasks named with these prefixes
# (patho_bench/DatasetFactory.py, DatasetFactory._labels_dataset)
SURVIVAL_PREFIXES = ("OS", "PFS", "DSS", "DFS")
SAMPLE_COLUMNS = ("slide_id", "case_id")


class TaskError(PathalignError, ValueError):
    """A task that cannot be run; the message names the task file and the problem."""


@dataclass
class Task:
    """One benchmark task.

    Args:
        name: task name (results key).
        task_type: ``classification`` or ``survival``.
        label: the label column (``task_col``); for survival the prefix of ``<label>_days`` / ``<label>_event``.
        table: one row per slide (or per case) with the label, ids and ``fold_*`` columns.
        metrics: metrics named by the task YAML (informational).
        ordinal: labels are ordered (adds quadratic kappa).
        source: file (or ``cohort:<column>``) the task came from.
        sample_col: the unit scored, ``slide_id`` or ``case_id`` (default: ``slide_id`` when the table has it).
        error: why the task cannot run (then the benchmark reports it and skips it).
        warnings: what the benchmark should say about the task (rows left out, a patient on both sides of a
            split), each naming the rows' ids.
        patients: one row per patient (``case_id``, label columns, folds) for the representations scored per
            patient (molecular, fused, baselines), when it covers more patients than ``table`` (cohort tasks on
            a cohort where some patients have no slide); None: ``table`` collapsed by ``case_id``.
    """

    name: str
    task_type: str
    label: str
    table: pd.DataFrame
    metrics: list[str] = field(default_factory=list)
    ordinal: bool = False
    source: str = ""
    sample_col: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    patients: pd.DataFrame | None = None

    @property
    def folds(self) -> list[str]:
        return sorted((c for c in self.table.columns if c.startswith("fold_") and c[5:].isdigit()),
                      key=lambda c: int(c.split("_")[1]))

    @property
    def id_column(self) -> str:
        """The column whose values are the samples scored."""
        if self.sample_col:
            return self.sample_col
        return "slide_id" if "slide_id" in self.table.columns else "case_id"

    @property
    def time_col(self) -> str:
        return f"{self.label}_days"

    @property
    def event_col(self) -> str:
        return f"{self.label}_event"

    @property
    def label_columns(self) -> list[str]:
        """Columns that must be present (and not NaN) for a row to count as labelled."""
        return [self.time_col, self.event_col] if self.task_type == "survival" else [self.label]


def failed_task(name: str, source: str, error: str, task_type: str = "classification") -> Task:
    """A placeholder for a task that cannot run; the benchmark reports ``error`` under ``name``."""
    return Task(name, task_type, "", pd.DataFrame(), source=source, error=error)


def _check_task(task: Task) -> Task:
    t = task.table
    if task.task_type not in TASK_TYPES:
        raise TaskError(f"{task.source}: task_type must be one of {TASK_TYPES}, got {task.task_type!r}")
    if "slide_id" not in t.columns and "case_id" not in t.columns:
        raise TaskError(f"{task.source}: needs a slide_id or case_id column")
    if task.sample_col is not None and task.sample_col not in SAMPLE_COLUMNS:
        raise TaskError(f"{task.source}: sample_col must be one of {SAMPLE_COLUMNS}, got {task.sample_col!r}")
    if task.sample_col is not None and task.sample_col not in t.columns:
        raise TaskError(f"{task.source}: sample_col {task.sample_col!r} is not a column ({list(t.columns)})")
    missing = [c for c in task.label_columns if c not in t.columns]
    if missing:
        what = "label column" if task.task_type == "classification" else "survival columns"
        raise TaskError(f"{task.source}: {what} {missing} not in {list(t.columns)}")
    if not task.folds:
        raise TaskError(f"{task.source}: no fold_0..fold_K columns")
    for f in task.folds:
        bad = set(t[f].dropna().unique()) - {"train", "val", "test"}
        if bad:
            raise TaskError(f"{task.source}: column {f} has values {sorted(bad)} (train/val/test expected)")
    return task


def _load_one(tsv: Path, cfg_path: Path) -> Task:
    import yaml

    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise TaskError(f"{cfg_path}: not a readable YAML file ({e})") from None
    if not isinstance(cfg, dict):
        raise TaskError(f"{cfg_path}: expected a mapping (task_col, sample_col, task_type, metrics)")
    try:
        table = pd.read_csv(tsv, sep="\t", dtype={"slide_id": str, "case_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise TaskError(f"{tsv}: not a readable TSV file ({e})") from None
    label = str(cfg.get("task_col", "label"))
    # Patho-Bench's YAML has no task_type for linprobe/coxnet tasks: survival is told by the name
    default_type = "survival" if label.startswith(SURVIVAL_PREFIXES) and {f"{label}_days", f"{label}_event"} <= set(
        table.columns) else "classification"
    task = _check_task(Task(_task_name(tsv, cfg), str(cfg.get("task_type", default_type)), label, table,
                            list(cfg.get("metrics", []) or []), bool(cfg.get("ordinal", False)), str(tsv),
                            sample_col=cfg.get("sample_col")))
    task.table = exclude_bad_survival(task.table, task, task.warnings)
    task.warnings += split_leaks(task)
    return task


def _task_name(tsv: Path, cfg: dict) -> str:
    return str(cfg.get("name") or (tsv.parent.name if tsv.stem.startswith("k=") else tsv.stem))


def load_pathobench_tasks(root: str | Path) -> list[Task]:
    """Every ``*.tsv`` under ``root`` with a YAML beside it (``config.yaml`` or ``<stem>.yaml``).

    A task whose files cannot be read or checked is returned as a :func:`failed_task` (its ``error``
    names the file and the problem), so that one bad task does not stop the others.

    Args:
        root: a Patho-Bench split folder (``<task>/k=all.tsv`` + ``<task>/config.yaml``) or a folder of them.

    Returns:
        The tasks, sorted by path.
    """
    root = Path(root)
    if not root.is_dir():
        raise TaskError(f"{root}: no such split folder")
    tasks = []
    for tsv in sorted(root.rglob("*.tsv")):
        cfg_path = next((p for p in (tsv.with_suffix(".yaml"), tsv.parent / "config.yaml") if p.is_file()), None)
        if cfg_path is None:
            continue
        try:
            tasks.append(_load_one(tsv, cfg_path))
        except TaskError as e:
            tasks.append(failed_task(tsv.parent.name if tsv.stem.startswith("k=") else tsv.stem, str(tsv), str(e)))
    if not tasks:
        raise TaskError(f"{root}: no task (a .tsv with a YAML beside it)")
    return tasks


def patient_folds(cases: pd.Series, strata: pd.Series | None, k: int, seed: int, val_fraction: float = 0.2) -> pd.DataFrame:
    """``fold_0..fold_{k-1}`` columns for the rows of ``cases`` (train/val/test), split by patient."""
    from sklearn.model_selection import StratifiedKFold

    patients = pd.Series(cases.unique())
    if strata is not None:
        first = pd.Series(strata.values, index=cases.values).groupby(level=0).first()
        y = first.loc[patients].astype(str).to_numpy()
    else:
        y = np.zeros(len(patients), str)
    counts = pd.Series(y).value_counts()
    n_splits = int(min(k, counts.min())) if strata is not None else k
    if n_splits < 2:
        small = counts[counts < 2].index.tolist()
        raise TaskError(f"cannot make {k} folds: class(es) {small} have only {counts.min()} patient(s)")
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    out = pd.DataFrame(index=cases.index)
    rng = np.random.default_rng(seed)
    for f, (train_i, test_i) in enumerate(skf.split(np.zeros(len(y)), y)):
        train_p = rng.permutation(patients.iloc[train_i].to_numpy())
        n_val = max(1, int(round(val_fraction * len(train_p))))
        role = {p: "test" for p in patients.iloc[test_i]}
        role.update({p: "val" for p in train_p[:n_val]})
        role.update({p: "train" for p in train_p[n_val:]})
        out[f"fold_{f}"] = cases.map(role).to_numpy()
    return out


def _ids(values, n: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:n])) + (f" and {len(values) - n} more" if len(values) > n else "")


def exclude_bad_survival(table: pd.DataFrame, task: Task, warnings: list[str]) -> pd.DataFrame:
    """``table`` without the rows of a survival task whose time is negative or whose time or event is missing.

    scikit-survival refuses negative times ("observed time contains values smaller zero") in every fold;
    these rows are left out before any fold runs, and one warning per cause names the column and the rows
    (by ``case_id``, else ``slide_id``) with their values. Classification tasks are returned unchanged.

    Args:
        table: the task's rows.
        task: the task (its type and survival columns).
        warnings: appended to.

    Returns:
        The rows kept.
    """
    if task.task_type != "survival" or not {task.time_col, task.event_col} <= set(table.columns):
        return table
    who = table["case_id"] if "case_id" in table.columns else table.get("slide_id", pd.Series(table.index))
    time = pd.to_numeric(table[task.time_col], errors="coerce")
    event = pd.to_numeric(table[task.event_col], errors="coerce")
    missing = time.isna() | event.isna()
    negative = ~missing & (time < 0)
    if missing.any():
        ids = list(dict.fromkeys(who[missing].astype(str)))
        warnings.append(f"task {task.name}: {len(ids)} patient(s) without {task.time_col} or {task.event_col} left "
                        f"out of the survival task: {_ids(ids)}")
    if negative.any():
        bad = dict(zip(who[negative].astype(str), time[negative]))
        warnings.append(f"task {task.name}: {len(bad)} patient(s) with negative {task.time_col} left out of the "
                        f"survival task: " + _ids(f"{k} ({task.time_col} = {v:g})" for k, v in bad.items()))
    return table[~(missing | negative)].reset_index(drop=True)


def split_leaks(task: Task) -> list[str]:
    """Warnings for patients whose rows (slides) lie in two parts (train/val/test) of one fold.

    A slide-level split may put one patient's slides on both sides; the patient's other slides then leak
    what the test slide shows. One warning per fold names the patients.
    """
    t = task.table
    if "case_id" not in t.columns or t.empty:
        return []
    out = []
    for f in task.folds:
        roles = t.dropna(subset=[f]).groupby(t["case_id"].astype(str))[f].nunique()
        leaked = roles[roles > 1].index.tolist()
        if leaked:
            out.append(f"task {task.name}: {f} puts {len(leaked)} patient(s) in two parts (train/val/test) through "
                       f"their slides, so the test part is not independent of training: {_ids(leaked)}")
    return out


def patient_table(task: Task) -> pd.DataFrame:
    """One row per patient of ``task``: ``case_id``, the label columns and the folds.

    ``task.patients`` when the task has one; else the task's rows collapsed by ``case_id`` (rows without a
    label are kept, with NaN, so that the caller can count them).

    Raises:
        TaskError: no ``case_id`` column, or a patient whose rows disagree on a label or a fold (then a patient
            would be on two sides of the split when scored per patient).
    """
    if task.patients is not None:
        return task.patients.copy()
    t = task.table.copy()
    where = f"task {task.name}" + (f" ({task.source})" if task.source else "")
    if "case_id" not in t.columns:
        raise TaskError(f"{where}: no case_id column; embeddings of a patient (molecular, fused, baselines) need "
                        "one to be scored")
    t["case_id"] = t["case_id"].astype(str)
    keep = [c for c in (task.label_columns + task.folds) if c in t.columns]
    per = t.groupby("case_id", sort=False)[keep].nunique(dropna=True)
    bad = per[(per > 1).any(axis=1)]
    if len(bad):
        cols = sorted({c for c in keep if (bad[c] > 1).any()})
        raise TaskError(f"{where}: patient(s) {_ids(bad.index)} have several values in {cols} across their rows; "
                        "scored per patient they would be on two sides of a split")
    first = t.groupby("case_id", sort=False)[keep].first().reset_index()
    return first


def match_ids(ids: pd.Series, known: Iterable[str], normalise: Callable[[object], str]) -> pd.Series:
    """``ids`` mapped onto the ``known`` ids (those of the embeddings or the cohort).

    An id matches as written (stripped) or, failing that, by ``normalise`` (the cohort's id normalisation,
    :meth:`pathalign.cohort.ids.IdRule.normalise_case`: blanks removed, upper case under the TCGA rule) when
    exactly one known id normalises the same way; ids that match nothing are kept as written (stripped).
    """
    known = list(known)
    exact = set(known)
    by_key: dict[str, list[str]] = {}
    for k in known:
        by_key.setdefault(normalise(k), []).append(k)

    def one(v: object) -> str:
        v = str(v).strip()
        if v in exact:
            return v
        hit = by_key.get(normalise(v), [])
        return hit[0] if len(hit) == 1 else v

    return ids.map(one)


def _fold_roles(cases: pd.Series, strata: pd.Series | None, k: int, seed: int, columns: list[str] | None = None
                ) -> pd.DataFrame:
    """:func:`patient_folds`, falling back to unstratified folds (and to "train" only) for small groups, with
    exactly ``columns`` when given (a fold the split cannot make puts every patient in train)."""
    try:
        out = patient_folds(cases, strata, k, seed)
    except TaskError:
        n = cases.nunique()
        out = (patient_folds(cases, None, min(k, n), seed) if n >= 2
               else pd.DataFrame({"fold_0": ["train"] * len(cases)}, index=cases.index))
    if columns is not None:
        out = out.reindex(columns=columns, fill_value="train")
    return out


def _cohort_task(name: str, task_type: str, label: str, patients: pd.DataFrame, slides: pd.DataFrame | None,
                 strata: str, k: int, seed: int, source: str) -> Task:
    """A task over ``patients`` (one row each); with ``slides`` (one row per slide), scored per slide on them.

    Folds: the patients with slides are split as before (stratified on ``strata``), the others added by a
    split of their own into the same folds; when the patients with slides cannot be split, all are split
    together. Raises :class:`TaskError` when no split can be made.
    """
    keep = ["case_id", *([label] if task_type == "classification" else ["OS_days", "OS_event"])]
    if slides is None:
        folds = patient_folds(patients.case_id, patients[strata], k, seed)
        return Task(name, task_type, label, pd.concat([patients[keep], folds], axis=1).reset_index(drop=True),
                    source=source, sample_col="case_id")
    with_slides = patients.case_id.isin(set(slides.case_id))
    try:
        sf = patient_folds(slides.case_id, slides[strata], k, seed)
        role = pd.concat([slides[["case_id"]], sf], axis=1).drop_duplicates("case_id").set_index("case_id")
        rest = patients[~with_slides]
        if len(rest):
            rf = _fold_roles(rest.case_id, rest[strata], len(sf.columns), seed, list(sf.columns))
            role = pd.concat([role, pd.concat([rest[["case_id"]], rf], axis=1).set_index("case_id")])
    except TaskError:
        pf = patient_folds(patients.case_id, patients[strata], k, seed)
        role = pd.concat([patients[["case_id"]], pf], axis=1).set_index("case_id")
    pt = patients[keep].join(role, on="case_id").reset_index(drop=True)
    st = slides[keep + ["slide_id"]].join(role, on="case_id").reset_index(drop=True)
    return Task(name, task_type, label, st, source=source, sample_col="slide_id",
                patients=pt if (~with_slides).any() else None)


def derive_tasks(manifest: pd.DataFrame, k: int = 5, seed: int = 0, slide_level: bool = True,
                 labels: list[str] | None = None, max_classes: int = 20) -> list[Task]:
    """Tasks from a cohort's clinical columns: every categorical label with 2..``max_classes`` classes, and
    survival (task ``survival``, columns ``OS_days``/``OS_event``) when they exist.

    Classes are counted over every patient with the label, with or without slides. On a cohort with slides
    (and ``slide_level``) a task is scored per slide on the slide embeddings (one row per slide; folds by
    patient, as before), and per patient on the embeddings of a patient (molecular, fused, baselines), over
    all its labelled patients (:attr:`Task.patients`). On a cohort without slides tasks are per patient.
    Survival rows with a negative or missing time are left out and named in :attr:`Task.warnings`.

    A label named in ``labels`` that cannot be a task (absent, one class, too many classes, a class with
    too few patients to split) is returned as a :func:`failed_task` naming the column, and the others
    still run; unrequested columns that are not labels are left out quietly.

    Args:
        manifest: the cohort manifest (``case_id``, ``slide_ids``, clinical columns).
        k: folds.
        seed: fold assignment seed.
        slide_level: one row per slide (``sample_col`` ``slide_id``) instead of one per patient.
        labels: the label columns to use (default: every categorical one).
        max_classes: most classes a label may have.

    Returns:
        The tasks.
    """
    reserved = {"case_id", "slide_ids", "n_modalities", "OS_days", "OS_event"}
    man = manifest.copy().reset_index(drop=True)
    cand = labels or [c for c in man.columns if c not in reserved and not c.startswith("has_")
                      and (pd.api.types.is_string_dtype(man[c]) or isinstance(man[c].dtype, pd.CategoricalDtype))]
    has_slides = "slide_ids" in man.columns and bool(man.slide_ids.apply(len).gt(0).any())
    slide_rows = None
    if slide_level and has_slides:
        slide_rows = (man[man.slide_ids.apply(len) > 0].explode("slide_ids").rename(columns={"slide_ids": "slide_id"})
                      .reset_index(drop=True))
    tasks = []
    for col in cand:
        source = f"cohort:{col}"
        if col not in man.columns:
            tasks.append(failed_task(col, source, f"label column {col!r} is not in the cohort"))
            continue
        sub = man[man[col].notna()].reset_index(drop=True)
        n_cls = sub[col].nunique()
        if not 2 <= n_cls <= max_classes:
            if labels:
                tasks.append(failed_task(col, source, f"label column {col!r} has {n_cls} class(es) on {len(sub)} "
                                                      f"patients (2..{max_classes} needed)"))
            continue
        slides = None if slide_rows is None else slide_rows[slide_rows[col].notna()].reset_index(drop=True)
        try:
            tasks.append(_cohort_task(col, "classification", col, sub, slides if slides is None or len(slides)
                                      else None, col, k, seed, source))
        except TaskError as e:
            tasks.append(failed_task(col, source, f"label column {col!r}: {e}"))
    if {"OS_days", "OS_event"} <= set(man.columns):
        probe = Task("survival", "survival", "OS", man)
        warnings: list[str] = []
        sub = exclude_bad_survival(man, probe, warnings)
        slides = None
        if slide_rows is not None:
            slides = slide_rows[slide_rows.case_id.isin(set(sub.case_id))].reset_index(drop=True)
        try:
            task = _cohort_task("survival", "survival", "OS", sub, slides if slides is None or len(slides) else None,
                                "OS_event", k, seed, "cohort:survival")
        except TaskError as e:
            tasks.append(failed_task("survival", "cohort:survival", f"OS_event: {e}", "survival"))
        else:
            task.warnings += warnings
            tasks.append(task)
    return tasks
