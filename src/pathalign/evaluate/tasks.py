"""Benchmark tasks: Patho-Bench split folders, or tasks derived from a cohort's clinical labels.

A task is a table of items (``slide_id`` and/or ``case_id``), a label (or ``OS_days``/``OS_event``
for survival) and folds ``fold_0..fold_K`` whose values are ``train``/``val``/``test``; splits are
always by patient, so no patient is in two parts of a fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PathalignError

TASK_TYPES = ("classification", "survival")


class TaskError(PathalignError, ValueError):
    """A task that cannot be run; the message names the task file and the problem."""


@dataclass
class Task:
    name: str
    task_type: str
    label: str
    table: pd.DataFrame
    metrics: list[str] = field(default_factory=list)
    ordinal: bool = False
    source: str = ""

    @property
    def folds(self) -> list[str]:
        return sorted((c for c in self.table.columns if c.startswith("fold_")), key=lambda c: int(c.split("_")[1]))

    @property
    def id_column(self) -> str:
        return "slide_id" if "slide_id" in self.table.columns else "case_id"


def _check_task(task: Task) -> Task:
    t = task.table
    if task.task_type not in TASK_TYPES:
        raise TaskError(f"{task.source}: task_type must be one of {TASK_TYPES}, got {task.task_type!r}")
    if "slide_id" not in t.columns and "case_id" not in t.columns:
        raise TaskError(f"{task.source}: needs a slide_id or case_id column")
    if task.task_type == "classification" and task.label not in t.columns:
        raise TaskError(f"{task.source}: label column {task.label!r} not in {list(t.columns)}")
    if task.task_type == "survival" and not {"OS_days", "OS_event"} <= set(t.columns):
        raise TaskError(f"{task.source}: survival tasks need OS_days and OS_event columns")
    if not task.folds:
        raise TaskError(f"{task.source}: no fold_0..fold_K columns")
    for f in task.folds:
        bad = set(t[f].dropna().unique()) - {"train", "val", "test"}
        if bad:
            raise TaskError(f"{task.source}: column {f} has values {sorted(bad)} (train/val/test expected)")
    return task


def load_pathobench_tasks(root: str | Path) -> list[Task]:
    """Every ``*.tsv`` under ``root`` with a YAML beside it (``config.yaml`` or ``<stem>.yaml``)."""
    import yaml

    root = Path(root)
    tasks = []
    for tsv in sorted(root.rglob("*.tsv")):
        cfg_path = next((p for p in (tsv.with_suffix(".yaml"), tsv.parent / "config.yaml") if p.is_file()), None)
        if cfg_path is None:
            continue
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        table = pd.read_csv(tsv, sep="\t", dtype={"slide_id": str, "case_id": str})
        name = cfg.get("name") or (tsv.parent.name if tsv.stem.startswith("k=") else tsv.stem)
        tasks.append(_check_task(Task(name, cfg.get("task_type", "classification"), cfg.get("task_col", "label"),
                                      table, list(cfg.get("metrics", [])), bool(cfg.get("ordinal", False)), str(tsv))))
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
        raise TaskError(f"cannot make {k} folds: a class has only {counts.min()} patients")
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
    survival when ``OS_days``/``OS_event`` exist. Slide-level rows when ``slide_level`` (one per slide)."""
    reserved = {"case_id", "slide_ids", "n_modalities", "OS_days", "OS_event"}
    man = manifest.copy()
    cand = labels or [c for c in man.columns if c not in reserved and not c.startswith("has_")
                      and (pd.api.types.is_string_dtype(man[c]) or isinstance(man[c].dtype, pd.CategoricalDtype))]
    if slide_level:
        rows = man[man.slide_ids.apply(len) > 0].explode("slide_ids").rename(columns={"slide_ids": "slide_id"})
    else:
        rows = man
    rows = rows.reset_index(drop=True)
    tasks = []
    for col in cand:
        sub = rows[rows[col].notna()]
        n_cls = sub[col].nunique()
        if not 2 <= n_cls <= max_classes:
            continue
        folds = patient_folds(sub.case_id, sub[col], k, seed)
        keep = ["case_id", col] + (["slide_id"] if slide_level else [])
        tasks.append(Task(col, "classification", col, pd.concat([sub[keep], folds], axis=1).reset_index(drop=True),
                          source=f"cohort:{col}"))
    if {"OS_days", "OS_event"} <= set(rows.columns):
        sub = rows[rows.OS_days.notna() & rows.OS_event.notna()]
        folds = patient_folds(sub.case_id, sub.OS_event, k, seed)
        keep = ["case_id", "OS_days", "OS_event"] + (["slide_id"] if slide_level else [])
        tasks.append(Task("survival", "survival", "OS_days", pd.concat([sub[keep], folds], axis=1).reset_index(drop=True),
                          source="cohort:survival"))
    return tasks
