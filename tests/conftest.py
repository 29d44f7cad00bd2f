"""Shared fixtures and helpers for the test suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Test data shipped in the repository (reference vectors, the CMU H&E region, a TCGA MAF): tests/data/README.md.
TEST_DATA = Path(__file__).resolve().parent / "data"
REFERENCE = TEST_DATA
DATA = TEST_DATA

# Real TCGA cohorts are not copied into the repository: they come from shared/ beside the checkout
# (or PATHALIGN_SHARED), and the tests that read them skip with this message when it is absent.
if os.environ.get("PATHALIGN_SHARED"):
    SHARED = Path(os.environ["PATHALIGN_SHARED"])
else:
    SHARED = Path(__file__).resolve().parents[2] / "shared"
    if not SHARED.exists():  # CI clones main elsewhere with shared/ beside it
        SHARED = Path.cwd().parent / "shared"
REAL_DATA = SHARED / "data" / "real"
SHARED_MISSING = (f"needs ../shared (real TCGA cohorts), not found at {SHARED}: "
                  "put it beside the checkout or set PATHALIGN_SHARED=/path/to/shared")

torch.set_num_threads(min(2, torch.get_num_threads()))


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _code_names(code) -> set[str]:
    """Global names a function's code (and the code nested in it: lambdas, comprehensions) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _code_names(const)
    return names


def _uses_shared(func) -> bool:
    """Does ``func`` refer to a module global that is a path under SHARED (DATA, REFERENCE, REF_FILE, ...)?"""
    func = getattr(func, "__wrapped__", func)
    code, module_globals = getattr(func, "__code__", None), getattr(func, "__globals__", {})
    if code is None:
        return False
    for name in _code_names(code):
        value = module_globals.get(name)
        if isinstance(value, Path) and (value == SHARED or SHARED in value.parents):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    """Tests (or their fixtures) that read ../shared are skipped, with how to get it, when it is absent."""
    if SHARED.is_dir():
        return
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        funcs = [getattr(item, "function", None)]
        if fixtures is not None:
            funcs += [d.func for defs in fixtures.name2fixturedefs.values() for d in defs]
        if any(f is not None and _uses_shared(f) for f in funcs):
            item.add_marker(pytest.mark.skip(reason=SHARED_MISSING))


def needs_cuda():
    return pytest.mark.skipif(not (torch.cuda.is_available() and os.environ.get("PATHALIGN_GPU_TESTS")),
                              reason="GPU tests: set PATHALIGN_GPU_TESTS=1 on a CUDA machine")


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory):
    """A small synthetic cohort (generated once per test session)."""
    from pathalign.synth import SynthConfig, generate_cohort

    out = tmp_path_factory.mktemp("synth")
    truth = generate_cohort(out, SynthConfig(patients=160, seed=3, slide_size=768, genes=200, probes=120),
                            workers=1, progress=False)
    return out, truth


@pytest.fixture(scope="session")
def small_cohort(small_synth, tmp_path_factory):
    """``cohort build`` on the small synthetic cohort (molecular tables and slides table)."""
    from pathalign.cohort import CohortSources, build_cohort

    syn, truth = small_synth
    out = tmp_path_factory.mktemp("cohort")
    build_cohort(CohortSources(clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"),
                               rna=str(syn / "rna_tpm.tsv.gz"), maf=[str(syn / "mutations.maf")],
                               cnv=str(syn / "cnv_gistic.tsv"), methylation=str(syn / "methylation_beta.tsv.gz")),
                 out, progress=False)
    return out


@pytest.fixture(scope="session")
def features_cohort(small_synth, tmp_path_factory):
    """The small synthetic cohort with patch features (built-in encoder, 64-px patches) and a cohort folder."""
    from pathalign.cohort import CohortSources, build_cohort
    from pathalign.slides.patch import PatchConfig
    from pathalign.slides.pipeline import PipelineConfig, run_pipeline
    from pathalign.slides.segment import SegmentConfig

    syn, truth = small_synth
    out = tmp_path_factory.mktemp("features")
    cfg = PipelineConfig(out=out, progress=False, patch=PatchConfig(patch_size=64),
                         segment=SegmentConfig(min_fragment_um2=2000))  # the test slides are small
    summary = run_pipeline(sorted((syn / "slides").glob("*.tiff")), cfg)
    assert (summary.status == "done").all()
    cohort = out / "cohort"
    build_cohort(CohortSources(clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"),
                               features=str(cfg.features_dir), rna=str(syn / "rna_tpm.tsv.gz"),
                               maf=[str(syn / "mutations.maf")], cnv=str(syn / "cnv_gistic.tsv"),
                               methylation=str(syn / "methylation_beta.tsv.gz")), cohort, progress=False)
    return cohort, cfg.features_dir, truth
