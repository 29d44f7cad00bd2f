"""Benchmark tasks: Patho-Bench split folders, or tasks derived from a cohort's clinical labels.

A task is a table of rows (``slide_id`` and/or ``case_id``), a label column (``task_col``; for
survival tasks the columns ``<task_col>_days`` / ``<task_col>_event``, e.g. ``PFS_days`` /
``PFS_event``, as Patho-Bench reads them) and folds ``fold_0..fold_K`` whose values are
``train``/``val``/``test``. ``sample_col`` is the unit scored (``slide_id`` or ``case_id``), as in
Patho-Bench's task YAML. A task that cannot be read or split keeps its name and an ``error``:
the benchmark reports it and runs the others.
"""
from __future__ import annotations

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
    return _check_task(Task(_task_name(tsv, cfg), str(cfg.get("task_type", default_type)), label, table,
                            list(cfg.get("metrics", []) or []), bool(cfg.get("ordinal", False)), str(tsv),
                            sample_col=cfg.get("sample_col")))


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


def derive_tasks(manifest: pd.DataFrame, k: int = 5, seed: int = 0, slide_level: bool = True,
                 labels: list[str] | None = None, max_classes: int = 20) -> list[Task]:
    """Tasks from a cohort's clinical columns: every categorical label with 2..``max_classes`` classes, and
    survival (task ``survival``, columns ``OS_days``/``OS_event``) when they exist.

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
    man = manifest.copy()
    cand = labels or [c for c in man.columns if c not in reserved and not c.startswith("has_")
                      and (pd.api.types.is_string_dtype(man[c]) or isinstance(man[c].dtype, pd.CategoricalDtype))]
    if slide_level:
        rows = man[man.slide_ids.apply(len) > 0].explode("slide_ids").rename(columns={"slide_ids": "slide_id"})
    else:
        rows = man
    rows = rows.reset_index(drop=True)
    sample_col = "slide_id" if slide_level else "case_id"
    tasks = []
    for col in cand:
        source = f"cohort:{col}"
        if col not in rows.columns:
            tasks.append(failed_task(col, source, f"label column {col!r} is not in the cohort"))
            continue
        sub = rows[rows[col].notna()]
        n_cls = sub[col].nunique()
        if not 2 <= n_cls <= max_classes:
            if labels:
                tasks.append(failed_task(col, source, f"label column {col!r} has {n_cls} class(es) "
                                                      f"(2..{max_classes} needed)"))
            continue
        try:
            folds = patient_folds(sub.case_id, sub[col], k, seed)
        except TaskError as e:
            tasks.append(failed_task(col, source, f"label column {col!r}: {e}"))
            continue
        keep = ["case_id", col] + (["slide_id"] if slide_level else [])
        tasks.append(Task(col, "classification", col, pd.concat([sub[keep], folds], axis=1).reset_index(drop=True),
                          source=source, sample_col=sample_col))
    if {"OS_days", "OS_event"} <= set(rows.columns):
        sub = rows[rows.OS_days.notna() & rows.OS_event.notna()]
        try:
            folds = patient_folds(sub.case_id, sub.OS_event, k, seed)
        except TaskError as e:
            tasks.append(failed_task("survival", "cohort:survival", f"OS_event: {e}", "survival"))
        else:
            keep = ["case_id", "OS_days", "OS_event"] + (["slide_id"] if slide_level else [])
            tasks.append(Task("survival", "survival", "OS", pd.concat([sub[keep], folds], axis=1).reset_index(drop=True),
                              source="cohort:survival", sample_col=sample_col))
    return tasks
