"""Expected failures of the commands are one line on stderr naming the file or option, exit 2,
no traceback, nothing half-written.

Each case runs the real command in a fresh interpreter (``python -m pathalign ...``).
Unwritable outputs use a path under a regular FILE (``--out somefile/sub``): tests may run as
root, and chmod does not stop root from writing, while a file in the path stops everyone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    environ.pop("PATHALIGN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pathalign", *map(str, args)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """rc 2, exactly one line on stderr that names each of ``names``, no traceback anywhere."""
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr + proc.stdout, report
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, report
    assert lines[0].startswith("pathalign"), report
    for name in names:
        assert name in lines[0], f"{name!r} not named; {report}"
    return lines[0]


def tree(path: Path) -> dict:
    """Every file under ``path`` with its bytes (to check that nothing was written)."""
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _clinical(folder: Path, n: int) -> tuple[Path, list[str]]:
    cases = [f"TCGA-AA-{1000 + i}" for i in range(n)]
    path = folder / "clinical.tsv"
    pd.DataFrame({"case_id": cases, "cancer_type": ["BRCA", "LUAD"] * (n // 2) + ["BRCA"] * (n % 2)}).to_csv(
        path, sep="\t", index=False)
    return path, cases


@pytest.fixture(scope="module")
def tiny_cohorts(tmp_path_factory):
    """Cohort folders: ``rna3`` (RNA for 3 patients), ``rna12`` (RNA for 12), ``no_rna`` (CNV only)."""
    from pathalign.cohort import CohortSources, build_cohort

    root = tmp_path_factory.mktemp("tiny_cohorts")
    clinical, cases = _clinical(root, 12)
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(30)]
    out = {}
    for name, n in (("rna3", 3), ("rna12", 12)):
        samples = [c + "-01A-11R-A000-07" for c in cases[:n]]
        table = root / f"{name}.tsv"
        pd.DataFrame(rng.gamma(2.0, 5.0, (len(genes), n)), index=pd.Index(genes, name="gene"),
                     columns=samples).to_csv(table, sep="\t")
        build_cohort(CohortSources(clinical=str(clinical), rna=str(table)), root / name, progress=False)
        out[name] = root / name
    cnv = root / "cnv.tsv"
    pd.DataFrame(rng.integers(-2, 3, (len(genes), 12)), index=pd.Index(genes, name="gene"),
                 columns=[c + "-01A-11D-A000-01" for c in cases]).to_csv(cnv, sep="\t")
    build_cohort(CohortSources(clinical=str(clinical), cnv=str(cnv)), root / "no_rna", progress=False)
    out["no_rna"] = root / "no_rna"
    out["clinical"], out["rna_table"] = clinical, root / "rna12.tsv"
    return out


# --- usage errors: one line, exit 2, no verb module imported ---------------------------------

@pytest.mark.parametrize("argv, names", [(["tarin"], ["unknown command 'tarin'", "train"]),
                                         (["--bogus"], ["--bogus"]),
                                         (["train", "--cohort", "c", "--out", "o", "--bogus"], ["--bogus"]),
                                         (["cohort", "biuld"], ["biuld"])])
def test_usage_errors_are_one_line(tmp_path, argv, names):
    assert_clean_error(run_cli(*argv, cwd=tmp_path), *names)


def test_unknown_registry_name(tmp_path):
    line = assert_clean_error(run_cli("encode-example", "--preset", "nope", cwd=tmp_path), "preset 'nope'", "tiny")
    assert "\"" not in line  # not a KeyError's quoted repr


# --- unwritable output folder -----------------------------------------------------------------

@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file; ``blocker/sub`` cannot be created by anyone, root included."""
    path = tmp_path / "somefile"
    path.write_text("not a folder\n")
    return path


def test_cohort_build_unwritable_out(tmp_path, blocker, tiny_cohorts):
    before = tree(tmp_path)
    proc = run_cli("cohort", "build", "--clinical", tiny_cohorts["clinical"], "--rna", tiny_cohorts["rna_table"],
                   "--out", blocker / "sub", cwd=tmp_path)
    assert_clean_error(proc, "--out", str(blocker / "sub"), "is a file")
    assert tree(tmp_path) == before


def test_train_unwritable_out(tmp_path, blocker, tiny_cohorts):
    before = tree(tmp_path)
    proc = run_cli("train", "--cohort", tiny_cohorts["rna12"], "--out", blocker / "run", "--steps", "2", cwd=tmp_path)
    assert_clean_error(proc, "--out", str(blocker / "run"))
    assert tree(tmp_path) == before


def test_preprocess_unwritable_out(tmp_path, blocker):
    slide = tmp_path / "slide.tiff"
    slide.write_bytes(b"II*\x00")  # never read: the output check comes first
    before = tree(tmp_path)
    assert_clean_error(run_cli("preprocess", slide, "--out", blocker, cwd=tmp_path), "--out", str(blocker), "is a file")
    assert tree(tmp_path) == before


def test_embed_out_is_a_folder(tmp_path):
    (tmp_path / "emb").mkdir()
    assert_clean_error(run_cli("embed", "--mean-pool", "--features", tmp_path, "--out", tmp_path / "emb", cwd=tmp_path),
                       "--out", "is a folder")


# --- --device cuda without a GPU --------------------------------------------------------------

@pytest.mark.parametrize("argv", [["train", "--cohort", "{cohort}", "--out", "{tmp}/run", "--steps", "2"],
                                  ["preprocess", "{tmp}/slide.tiff", "--out", "{tmp}/pre"]])
def test_device_cuda_without_gpu(tmp_path, tiny_cohorts, argv):
    argv = [a.format(cohort=tiny_cohorts["rna12"], tmp=tmp_path) for a in argv]
    # no GPU visible whatever the machine has
    proc = run_cli(*argv, "--device", "cuda", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert_clean_error(proc, "--device cuda", "no CUDA GPU")
    assert not any(tmp_path.iterdir())


def test_device_malformed(tmp_path, tiny_cohorts):
    proc = run_cli("train", "--cohort", tiny_cohorts["rna12"], "--out", tmp_path / "run", "--device", "gpu0",
                   cwd=tmp_path)
    assert_clean_error(proc, "--device 'gpu0'")
    assert not (tmp_path / "run").exists()


# --- pretrain-rna ------------------------------------------------------------------------------

@pytest.mark.parametrize("cohort, extra, names", [
    ("rna3", [], ["needs at least 10 RNA samples", "has 3"]),
    ("no_rna", [], ["no RNA data"]),
    ("rna12", ["--steps", "0"], ["--steps 0"]),
    ("rna12", ["--batch-size", "1"], ["--batch-size 1"]),
    ("rna12", ["--mask-ratio", "1.5"], ["--mask-ratio 1.5"]),
])
def test_pretrain_rna_expected_errors(tmp_path, tiny_cohorts, cohort, extra, names):
    out = tmp_path / "fm"
    proc = run_cli("pretrain-rna", "--cohort", tiny_cohorts[cohort], "--out", out, *extra, cwd=tmp_path)
    line = assert_clean_error(proc, *names)
    if cohort != "rna12":
        assert str(tiny_cohorts[cohort]) in line  # names the cohort folder
    assert not out.exists()


# --- demo --------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, names", [(["--patients", "30"], ["--patients 30", "at least"]),
                                         (["--steps", "0"], ["--steps 0"])])
@pytest.mark.slow
def test_demo_rejects_settings_it_cannot_run(tmp_path, extra, names):
    out = tmp_path / "demo"
    assert_clean_error(run_cli("demo", "--out", out, *extra, cwd=tmp_path), *names)
    assert not out.exists()


# --- --debug and bugs keep their traceback -----------------------------------------------------

def test_debug_shows_the_traceback(tmp_path, blocker):
    proc = run_cli("--debug", "cohort", "build", "--clinical", "x.tsv", "--out", blocker / "sub", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "OutputPathError" in proc.stderr, proc.stderr


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    """Only PathalignError is turned into one line; any other exception propagates from main()."""
    import types

    from pathalign import cli
    from pathalign.errors import PathalignError

    fake = types.ModuleType("pathalign_fake_verb")
    fake.add_arguments = lambda p: p.add_argument("--kind")

    def run(args):
        raise (PathalignError("bad input: row 3") if args.kind == "expected" else ZeroDivisionError("bug"))

    fake.run = run
    monkeypatch.setitem(sys.modules, "pathalign_fake_verb", fake)
    monkeypatch.setitem(cli.VERBS, "fake", cli.Verb("pathalign_fake_verb", "a fake verb", out=None))
    monkeypatch.delenv("PATHALIGN_DEBUG", raising=False)
    assert cli.main(["fake", "--kind", "expected"]) == 2
    assert capsys.readouterr().err == "pathalign: error: bad input: row 3\n"
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake", "--kind", "bug"])


@pytest.mark.parametrize("seed", range(8))
def test_demo_minimum_patients_fill_a_training_batch(seed):
    """The bound ``check_demo_config`` states holds on the real split of a synthetic cohort of that size."""
    from pathalign.demo import DemoConfig, DemoError, check_demo_config
    from pathalign.synth.state import CANCER_TYPES, SynthConfig, sample_truth
    from pathalign.train.data import split_patients
    from pathalign.train.trainer import TrainConfig

    tiny = TrainConfig.from_preset("tiny")

    def accepted(n: int) -> bool:
        try:
            check_demo_config(DemoConfig(patients=n), tiny.batch_size, tiny.val_fraction, len(CANCER_TYPES))
        except DemoError:
            return False
        return True

    need = next(n for n in range(1, 1000) if accepted(n))  # the smallest cohort the demo accepts
    truth = sample_truth(SynthConfig(patients=need, seed=seed))
    split = split_patients(truth, tiny.val_fraction, seed, tiny.stratify)
    assert len(split["train"]) >= tiny.batch_size, f"seed={seed}: {len(split['train'])} training patients of {need}"
