"""A hostile run: resume on a rebuilt cohort, slide-id collisions, zero-patch slides, orphaned workers, stale files."""
from __future__ import annotations

import json

import pytest
import torch

from cohort_tables import build, patients, train_cfg, write_tables
from pathalign.train.trainer import Trainer, TrainingError


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A 3-step run on a small molecular cohort, checkpointed every step."""
    tmp = tmp_path_factory.mktemp("resume")
    cohort = tmp / "cohort"
    build(write_tables(tmp / "in"), cohort)
    run = tmp / "run"
    Trainer(cohort, run, train_cfg()).fit()
    return cohort, run, tmp


def _build_id(cohort):
    return json.loads((cohort / "cohort.json").read_text())["build_id"]


@pytest.mark.parametrize("change", ["values", "patients", "modalities"])
def test_resume_on_another_cohort_is_refused_in_one_line_naming_both_builds(checkpointed, tmp_path, change):
    cohort, run, _ = checkpointed
    kw = {"values": dict(seed=99), "patients": dict(ids=[p.replace("AA", "BB") for p in patients()]),
          "modalities": dict(methylation=False)}[change]
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", **kw), other)
    with pytest.raises(TrainingError) as e:
        Trainer(other, run, train_cfg(), resume=True)
    msg = str(e.value)
    assert _build_id(cohort) in msg and _build_id(other) in msg and "\n" not in msg, msg


def test_checkpoint_records_cohort_build_and_preprocessing(checkpointed):
    from pathalign.train.run_identity import preprocessing_id

    cohort, run, _ = checkpointed
    state = torch.load(run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip(),
                       weights_only=True)
    assert state["cohort_build_id"] == _build_id(cohort)
    assert state["preprocessing_id"] == preprocessing_id(json.loads(state["preprocessing"]))
    assert sorted(json.loads(state["modalities"])) == ["cnv", "methylation", "rna"]
    Trainer(cohort, run, train_cfg(), resume=True)  # the same cohort resumes


def test_older_checkpoint_without_build_id_is_checked_by_its_patients(checkpointed, tmp_path):
    import shutil

    cohort, run, _ = checkpointed
    old = tmp_path / "run"
    shutil.copytree(run, old)
    path = old / "checkpoints" / (old / "checkpoints" / "latest.txt").read_text().strip()
    state = torch.load(path, weights_only=True)
    for k in ("cohort_build_id", "preprocessing_id", "modalities"):
        state.pop(k)
    torch.save(state, path)
    Trainer(cohort, old, train_cfg(), resume=True)
    other = tmp_path / "other"
    build(write_tables(tmp_path / "in", ids=[p.replace("AA", "BB") for p in patients()]), other)
    with pytest.raises(TrainingError, match=r"patients of its train/val splits are not in .*TCGA-AA-"):
        Trainer(other, old, train_cfg(), resume=True)


def test_slides_whose_ids_collide_are_refused_naming_both_files_and_the_batch_goes_on(tmp_path):
    from pathalign.slides.patch import PatchConfig
    from pathalign.slides.pipeline import PipelineConfig, run_pipeline
    from slide_factory import blob_slide

    d = tmp_path / "in"
    d.mkdir()
    small = dict(size=(768, 512), blobs=[((300, 250), (150, 120))])
    blob_slide(d / "a.tiff", **small)
    blob_slide(d / "a.tif", seed=1, **small)  # another slide, the same name but for the extension
    blob_slide(d / "b.tiff", **small)
    out = tmp_path / "out"
    cfg = PipelineConfig(out=out, progress=False, patch=PatchConfig(patch_size=64))
    summary = run_pipeline(sorted(d.iterdir()), cfg).set_index("path")
    for name in ("a.tif", "a.tiff"):
        row = summary.loc[str(d / name)]
        assert row.status == "failed", summary
        assert str(d / "a.tif") in row.reason and str(d / "a.tiff") in row.reason
    assert summary.loc[str(d / "b.tiff"), "status"] == "done"
    assert sorted(p.name for p in cfg.features_dir.iterdir()) == ["b.h5"]
    # a rerun (e.g. a.tiff was processed before a.tif appeared) still refuses both, never "skipped"
    again = run_pipeline(sorted(d.iterdir()), cfg).set_index("path")
    assert (again.loc[[str(d / "a.tif"), str(d / "a.tiff")], "status"] == "failed").all()
