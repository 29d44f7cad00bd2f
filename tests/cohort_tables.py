"""Small TCGA-shaped molecular input tables (Xena style: features x samples) and a cohort built from them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pathalign.cohort import CohortSources, build_cohort
from pathalign.train.trainer import TrainConfig

N_PATIENTS, N_GENES, N_PROBES = 36, 40, 30


def patients(n: int = N_PATIENTS):
    return [f"TCGA-AA-{i:04d}" for i in range(n)]


def write_tables(folder, rna_names=None, cnv_names=None, meth_names=None, seed=5, ids=None, methylation=True):
    """A small TCGA-shaped cohort's input files (features x samples, Xena style); names default to a standard set.

    ``ids``: the patients (default :func:`patients`); ``methylation=False`` writes no methylation table.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(ids or patients())
    n = len(ids)
    samples = [f"{p}-01A" for p in ids]
    rna_names = rna_names or [f"ENSG{i:011d}.{i % 7 + 1}" for i in range(N_GENES)]
    cnv_names = cnv_names or [f"GENE{i}|{1000 + i}" for i in range(N_GENES)]
    meth_names = meth_names or [f"cg{i:08d}" for i in range(N_PROBES)]
    pd.DataFrame({"case_id": ids, "cancer_type": (["A", "B"] * n)[:n]}).to_csv(
        folder / "clinical.tsv", sep="\t", index=False)
    tpm = rng.lognormal(2, 1.5, (len(rna_names), n))
    pd.DataFrame(tpm, index=rna_names, columns=samples).rename_axis("gene").to_csv(folder / "rna.tsv", sep="\t")
    cnv = rng.integers(-2, 3, (len(cnv_names), n)).astype(float)
    pd.DataFrame(cnv, index=cnv_names, columns=samples).rename_axis("gene").to_csv(folder / "cnv.tsv", sep="\t")
    beta = rng.uniform(0, 1, (len(meth_names), n))
    if methylation:
        pd.DataFrame(beta, index=meth_names, columns=samples).rename_axis("probe").to_csv(folder / "meth.tsv", sep="\t")
    return folder


def build(folder, out):
    return build_cohort(CohortSources(clinical=str(folder / "clinical.tsv"), rna=str(folder / "rna.tsv"),
                                      cnv=str(folder / "cnv.tsv"),
                                      methylation=str(folder / "meth.tsv") if (folder / "meth.tsv").is_file() else None),
                        out, progress=False)


def train_cfg(**kw):
    base = dict(steps=3, batch_size=8, progress=False, seed=0, checkpoint_every=1, diagnostics_every=0)
    base.update(kw)
    return TrainConfig.from_preset("tiny", **base)


def write_features(folder, slide_ids, n=20, dim=16, empty=(), seed=0):
    """Pathalign features files (random features on a patch grid); slides in ``empty`` have zero patches."""
    from pathalign.io.features import write_patch_file

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for sid in slide_ids:
        k = 0 if sid in empty else n
        coords = np.stack(np.divmod(np.arange(k), 5), 1)[:, ::-1] * 256
        write_patch_file(folder / f"{sid}.h5", coords, np.zeros(k, np.int64), {"patch_size_level0": 256},
                         rng.standard_normal((k, dim)).astype(np.float16), {"encoder": "pathalign-stats"})
    return folder


def slides_cohort(tmp_path, empty=(), features=None, features_option=None):
    """A cohort of :func:`write_tables` with one slide per patient (``<patient>-S1``) and its features folder.

    ``features``: where the features files go (default ``tmp_path/features``); ``features_option``: the
    ``--features`` given to cohort build (default: that folder).
    """
    folder = write_tables(tmp_path / "in")
    sids = [f"{p}-S1" for p in patients()]
    pd.DataFrame({"slide_id": sids, "case_id": patients()}).to_csv(folder / "slides.tsv", sep="\t", index=False)
    feats = write_features(features or tmp_path / "features", sids, empty=empty)
    cohort = build_cohort(CohortSources(clinical=str(folder / "clinical.tsv"), rna=str(folder / "rna.tsv"),
                                        cnv=str(folder / "cnv.tsv"), slides=str(folder / "slides.tsv"),
                                        features=str(features_option or feats)), tmp_path / "cohort",
                          progress=False)
    return cohort, sids, feats


def trained_run(tmp):
    """A small molecular cohort built from :func:`write_tables` under ``tmp`` and a 3-step run on it (checkpointed
    every step): ``(cohort folder, run folder)``."""
    from pathalign.train.trainer import Trainer

    cohort = tmp / "cohort"
    build(write_tables(tmp / "in"), cohort)
    run = tmp / "run"
    Trainer(cohort, run, train_cfg()).fit()
    return cohort, run
