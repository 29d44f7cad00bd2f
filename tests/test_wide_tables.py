"""Wide molecular tables: the float32 HDF5 matrix layout, the streaming fit, the old-layout policy.

Small widths only; the memory bound is measured by ``benchmarks/wide_tables.py``, not here.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pathalign.cohort import CohortInputError, CohortSources, build_cohort, load_cohort
from pathalign.io.cohort_folder import new_build_id, write_matrix_frame, write_parquet
from pathalign.io.matrix_store import MatrixStore, MatrixStoreError, write_matrix
from pathalign.models.preprocessing import make_transform

P = [f"TCGA-AA-{i:04d}" for i in range(1, 41)]


def _random_frame(rng, n: int, f: int, nan_rate: float = 0.1, scale: float = 100.0) -> pd.DataFrame:
    values = rng.gamma(0.8, scale, (n, f))
    values[rng.random((n, f)) < nan_rate] = np.nan
    if f > 3:
        values[:, 1] = np.nan  # an all-missing feature
        values[:, 2] = 7.0  # a constant one
    return pd.DataFrame(values, index=pd.Index(P[:n], name="case_id"), columns=[f"G{j}" for j in range(f)])


def _write_tsv(df: pd.DataFrame, path) -> str:
    df.T.rename(columns=lambda c: f"{c}-01A").to_csv(path, sep="\t", float_format="%.17g")
    return str(path)


def test_matrix_round_trip_equals_the_old_parquet_layout_as_float32(tmp_path):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        df = _random_frame(rng, int(rng.integers(2, 40)), int(rng.integers(1, 1300)))
        build_id = new_build_id()
        write_parquet(df, tmp_path / "old.parquet", build_id, index=True)  # the format-1 matrix file
        old = pd.read_parquet(tmp_path / "old.parquet")
        write_matrix_frame(df, tmp_path / "new.h5", build_id)
        with MatrixStore(tmp_path / "new.h5") as store:
            new = store.frame()
            assert store.attrs["pathalign_cohort_build_id"] == build_id
        assert new.dtypes.eq(np.float32).all(), f"seed {seed}"
        assert new.index.tolist() == old.index.tolist() and new.columns.tolist() == old.columns.tolist()
        assert np.array_equal(new.to_numpy(), old.to_numpy().astype(np.float32), equal_nan=True), f"seed {seed}"


def test_cohort_build_writes_float32_matrices_read_back_exactly(tmp_path):
    rng = np.random.default_rng(5)
    df = _random_frame(rng, 12, 40)
    cohort = build_cohort(CohortSources(rna=_write_tsv(df, tmp_path / "rna.tsv")), tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "rna.h5").is_file() and not list((tmp_path / "c").glob("rna.parquet"))
    assert json.loads((tmp_path / "c" / "cohort.json").read_text())["format_version"] == 2
    got = cohort.matrix("rna")
    assert got.index.tolist() == df.index.tolist() and got.columns.tolist() == df.columns.tolist()
    assert np.array_equal(got.to_numpy(), df.to_numpy(np.float32), equal_nan=True)
    assert cohort.features("rna") == df.columns.tolist()


def test_store_reads_any_rows_and_columns_as_plain_indexing(tmp_path):
    rng = np.random.default_rng(11)
    df = _random_frame(rng, 30, 3000)
    write_matrix(tmp_path / "m.h5", df.to_numpy(), df.index.tolist(), df.columns.tolist())
    full = df.to_numpy(np.float32)
    with MatrixStore(tmp_path / "m.h5") as store:
        for trial in range(5):
            seed = 100 + trial
            r = np.random.default_rng(seed)
            rows = r.choice(30, int(r.integers(1, 30)), replace=False)
            cols = r.choice(3000, int(r.integers(1, 400)), replace=False)
            got = store.read([P[i] for i in rows], [f"G{j}" for j in cols])
            assert np.array_equal(got, full[rows][:, cols], equal_nan=True), f"seed {seed}"
            width = int(r.integers(2, 700))
            blocks = list(store.column_blocks([P[i] for i in rows], width))
            assert min(b.shape[1] for _, b in blocks) >= 2, f"seed {seed}"
            assert np.array_equal(np.concatenate([b for _, b in blocks], axis=1), full[rows], equal_nan=True)
        with pytest.raises(KeyError, match="TCGA-ZZ"):
            store.read(["TCGA-ZZ-0001"], None)
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(MatrixStoreError, match=r"x.h5: not a readable HDF5 file"):
        MatrixStore(tmp_path / "x.h5")


def test_interrupted_matrix_write_leaves_the_previous_file(tmp_path, monkeypatch):
    import h5py

    path = tmp_path / "m.h5"
    write_matrix(path, np.ones((2, 3)), ["a", "b"], ["x", "y", "z"])

    def fail(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", fail)
    with pytest.raises(OSError, match="disk full"):
        write_matrix(path, np.zeros((2, 3)), ["a", "b"], ["x", "y", "z"])
    monkeypatch.undo()
    with MatrixStore(path) as store:
        assert (store.read() == 1).all()
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


CASES = [  # (modality, units/options, value kind)
    ("rna", {"units": "tpm", "n_genes": 17}, "gamma"),
    ("rna", {"units": "log2tpm", "n_genes": 5}, "gamma"),
    ("rna", {"units": "fpkm", "n_genes": 9}, "gamma"),  # not columnwise: read whole
    ("cnv", {"cnv_kind": "gistic", "max_genes": 13}, "normal"),
    ("methylation", {"max_probes": 11}, "beta"),
    ("snp", {"min_freq": 0.1, "max_genes": 8}, "binary"),
]


def _values_of(kind: str, rng, n: int, f: int) -> pd.DataFrame:
    df = _random_frame(rng, n, f)
    if kind == "normal":
        df = df / 50 - 2
    elif kind == "beta":
        df = df / (df + 100)
    elif kind == "binary":
        df = (df > 80).astype(float).where(df.notna())
    return df


@pytest.mark.parametrize("modality,options,kind", CASES)
def test_streaming_fit_equals_the_in_memory_fit(tmp_path, modality, options, kind):
    for seed in range(6):
        rng = np.random.default_rng([seed, len(kind)])
        n, f = int(rng.integers(2, 40)), int(rng.integers(1, 120))
        df = _values_of(kind, rng, n, f)
        write_matrix_frame(df, tmp_path / "m.h5", "b")
        train = list(rng.permutation(df.index)[: max(2, n - 3)])
        meta = {"units": {"rna": options.get("units", "tpm")}}
        plain = make_transform(modality, meta, **options).fit(df.astype(np.float32).loc[train])
        with MatrixStore(tmp_path / "m.h5") as store:
            streamed = make_transform(modality, meta, **options)
            try:
                streamed.fit_store(store, train, width=int(rng.integers(2, 30)))
            except CohortInputError as e:  # e.g. no gene mutated often enough: the same error in both
                assert "mutated" in str(e), f"seed {seed}"
                continue
        assert streamed.state_dict() == plain.state_dict(), f"seed {seed} (n={n}, f={f})"


def test_streaming_selection_matches_an_independent_top_variance(tmp_path):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        df = _random_frame(rng, 25, 300, nan_rate=0.05)
        write_matrix_frame(df, tmp_path / "m.h5", "b")
        with MatrixStore(tmp_path / "m.h5") as store:
            tr = make_transform("rna", {"units": {"rna": "tpm"}}, n_genes=20).fit_store(store, P[:25], width=7)
        logged = np.log2(df.astype(np.float32).astype(float).clip(lower=0) + 1)
        expected = logged.var(ddof=0).dropna().sort_values(ascending=False).index[:20]  # pandas: the peer
        assert tr.features == [g for g in df.columns if g in set(expected)], f"seed {seed}"


def _two_modality_cohort(tmp_path):
    rng = np.random.default_rng(3)
    rna = _random_frame(rng, 20, 300)
    cnv = _random_frame(rng, 20, 50) / 50 - 2
    src = CohortSources(rna=_write_tsv(rna, tmp_path / "rna.tsv"), cnv=_write_tsv(cnv, tmp_path / "cnv.tsv"),
                        cnv_kind="log2")
    return build_cohort(src, tmp_path / "c", progress=False), rna, cnv


def test_cohort_data_reads_only_the_selected_features(tmp_path, monkeypatch):
    from pathalign.cohort.model_view import CohortData
    from pathalign.io.cohort_folder import Cohort
    from pathalign.models.preprocessing import MODEL_TRANSFORMS

    cohort, rna, cnv = _two_modality_cohort(tmp_path)
    asked: dict[str, int] = {}
    real_read = MatrixStore.read

    def read(self, patients=None, features=None):
        asked[self.path.name] = self.shape[1] if features is None else len(features)
        return real_read(self, patients, features)

    def whole(self, modality):
        raise AssertionError("CohortData loaded a whole matrix")

    monkeypatch.setattr(MatrixStore, "read", read)
    monkeypatch.setattr(Cohort, "matrix", whole)
    train = P[:14]
    data = CohortData(cohort, None, ["rna", "cnv"], train_ids=train, transform_options={"rna": {"n_genes": 12}},
                      transforms=MODEL_TRANSFORMS,
                      hidden={"cnv": {P[0]}})
    assert asked == {"rna.h5": 12, "cnv.h5": 50}  # the 12 selected of 300 genes; all 50 CNV genes (max_genes 2000)
    monkeypatch.undo()
    for m, mat, opts in (("rna", rna, {"n_genes": 12}), ("cnv", cnv, {})):
        mat = mat.astype(np.float32)
        if m == "cnv":
            mat = mat.drop(index=P[0])
        ref = make_transform(m, cohort.meta, **opts).fit(mat.loc[[p for p in train if p in mat.index]])
        assert data.preprocessing[m] == ref.state_dict()
        rows = [data.index[p] for p in mat.index]
        np.testing.assert_array_equal(data.arrays[m][rows], ref.transform(mat))
        assert data.valid[m].sum() == len(mat)


def _as_format_1(folder):
    """Rewrite a cohort folder as pathalign format 1 wrote it (matrices as Parquet)."""
    meta = json.loads((folder / "cohort.json").read_text())
    for name in [f for f in meta["files"] if f.endswith(".h5")]:
        with MatrixStore(folder / name) as store:
            frame = store.frame().astype(np.float64)
        write_parquet(frame, folder / name.replace(".h5", ".parquet"), meta["build_id"], index=True)
        (folder / name).unlink()
    meta.update(format_version=1, files=[f.replace(".h5", ".parquet") for f in meta["files"]])
    (folder / "cohort.json").write_text(json.dumps(meta))


def test_a_format_1_cohort_folder_is_refused_with_rebuild(tmp_path):
    cohort, _, _ = _two_modality_cohort(tmp_path)
    _as_format_1(cohort.path)
    with pytest.raises(CohortInputError, match=r"c: cohort format version 1 .*Parquet.*; rebuild the cohort with "
                                               r"pathalign cohort build"):
        load_cohort(cohort.path)
    meta = json.loads((cohort.path / "cohort.json").read_text())
    meta["format_version"] = 99
    (cohort.path / "cohort.json").write_text(json.dumps(meta))
    with pytest.raises(CohortInputError, match=r"format version 99 is newer .* upgrade pathalign"):
        load_cohort(cohort.path)
    _as_format_1(cohort.path)
    again, _, _ = _two_modality_cohort(tmp_path)  # rebuilding over the old folder replaces it
    assert sorted(again.meta["files"]) == ["cnv.h5", "manifest.parquet", "rna.h5"]
    assert [p.name for p in again.path.glob("*.parquet")] == ["manifest.parquet"]
