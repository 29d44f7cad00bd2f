"""A model records the scale of its training features and refuses, at inference, features at another one."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from cohort_tables import slides_cohort, train_cfg
from pathalign.io.features_contract import ContractError

RECORD = {"name": "pathalign-stats", "feature_dim": 16, "target_magnification": 20.0, "patch_size": 256,
          "effective_magnification": 20.0}


def _scaled_features(folder, slide_ids, target=20.0, patch_size=256, level0=20.0, size0=None, mpp=0.5, dim=16):
    """Features files with the scale attributes ``preprocess`` writes (``size0``: the level-0 patch side,
    default the one that makes the effective magnification the target)."""
    from pathalign.io.features import write_patch_file

    size0 = size0 or int(round(patch_size * level0 / target))
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    coords = np.stack(np.meshgrid(np.arange(4), np.arange(5)), -1).reshape(-1, 2) * size0  # [20, 2]
    for sid in slide_ids:
        write_patch_file(folder / f"{sid}.h5", coords, np.zeros(len(coords), np.int64),
                         {"patch_size": patch_size, "patch_size_level0": size0, "target_magnification": target,
                          "level0_magnification": level0, "mpp": mpp},
                         rng.standard_normal((len(coords), dim)).astype(np.float16), {"encoder": "pathalign-stats"})
    return folder


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory):
    """A 3-step model trained on slides at 20x, 256 px (0.5 µm/px): ``(cohort, model folder, slide ids, tmp)``."""
    from pathalign.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("scale")
    cohort, sids, feats = slides_cohort(tmp)
    _scaled_features(feats, sids)  # the same slides, with their scale recorded
    Trainer(cohort.path, tmp / "run", train_cfg()).fit()
    return cohort.path, tmp / "run" / "model", sids, tmp


OTHER_SCALES = {  # keyword arguments of _scaled_features -> what the error names
    "40x": (dict(target=40.0, level0=40.0), [r"target_magnification 40 \(36 slides: TCGA-AA-0000-S1", "the model's 20",
                                             r"effective magnification TCGA-AA-0000-S1 40x", "the model's 20x"]),
    "512px": (dict(patch_size=512), [r"patch_size 512 \(36 slides: TCGA-AA-0000-S1", "the model's 256"]),
    # claims 20x, 256 px, but its 256-px patches are 256 level-0 px of a 40x scan: 40x content
    "level0 side": (dict(level0=40.0, size0=256, mpp=0.25), [r"effective magnification TCGA-AA-0000-S1 40x",
                                                             "the model's 20x"]),
}
FIX = "'pathalign preprocess --magnification 20 --patch-size 256'"


def test_training_records_the_scale_and_it_round_trips(scaled_run, tmp_path):
    from pathalign.models.pathalign_model import load_model

    _, model_dir, _, _ = scaled_run
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["patch_encoder"] == RECORD
    assert "patches of 256 px at 20x (`--magnification 20 --patch-size 256`)" in (model_dir / "README.md").read_text()
    model = load_model(model_dir)
    assert model.patch_encoder == RECORD
    model.save_pretrained(tmp_path / "again")
    assert load_model(tmp_path / "again").patch_encoder == RECORD


@pytest.mark.parametrize("scale", sorted(OTHER_SCALES))
def test_embed_refuses_features_at_another_scale(scaled_run, tmp_path, scale):
    from pathalign.evaluate.embed import embed_with_model

    cohort, model_dir, sids, _ = scaled_run
    kw, expected = OTHER_SCALES[scale]
    other = _scaled_features(tmp_path / "features_other", sids, **kw)
    with pytest.raises(ContractError) as e:
        embed_with_model(model_dir, cohort, tmp_path / "emb.h5", features_dir=other, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{other}: ") and FIX in msg, msg
    for pattern in expected:
        assert re.search(pattern, msg), (pattern, msg)
    assert not (tmp_path / "emb.h5").exists()


@pytest.mark.parametrize("scale", sorted(OTHER_SCALES))
def test_heatmap_refuses_a_file_at_another_scale(scaled_run, tmp_path, scale):
    from pathalign.evaluate.heatmap import compute_heatmaps
    from pathalign.models.pathalign_model import load_model

    _, model_dir, sids, _ = scaled_run
    kw, expected = OTHER_SCALES[scale]
    _scaled_features(tmp_path, sids[:1], **kw)
    path = tmp_path / f"{sids[0]}.h5"
    with pytest.raises(ContractError) as e:
        compute_heatmaps(load_model(model_dir), path, blocks=[0])
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and FIX in msg, msg
    for pattern in expected:
        assert re.search(pattern.replace("36 slides", "1 slide"), msg), (pattern, msg)


def test_its_own_scale_and_an_exact_mpp_grid_are_accepted(scaled_run, tmp_path):
    from pathalign.evaluate.embed import embed_with_model
    from pathalign.evaluate.heatmap import compute_heatmaps
    from pathalign.models.pathalign_model import load_model

    cohort, model_dir, sids, _ = scaled_run
    # exact-mpp on a 40x scan at 0.2266 µm/px: 564 level-0 px, effective 20.03x
    exact = _scaled_features(tmp_path / "exact", sids, level0=10 / 0.2266, size0=564, mpp=0.2266)
    assert embed_with_model(model_dir, cohort, tmp_path / "emb.h5", features_dir=exact, progress=False).counts["wsi"] == 36
    model = load_model(model_dir)
    assert compute_heatmaps(model, exact / f"{sids[0]}.h5", blocks=[0]).slide_id == sids[0]
    same = _scaled_features(tmp_path / "same", sids[:1])
    assert compute_heatmaps(model, same / f"{sids[0]}.h5", blocks=[0]).slide_id == sids[0]


def test_unknown_values_are_not_compared():
    from pathalign.io.features_contract import check_model_scale

    unknown = {"encoder": None, "target_magnification": None, "patch_size": None, "patch_size_level0": 564,
               "mpp": None, "effective_magnification": None}  # a CLAM/EXAONE file
    check_model_scale(RECORD, {"clam": unknown}, "feats/")
    at_40 = dict(unknown, target_magnification=40.0, patch_size=256, effective_magnification=40.0)
    check_model_scale({"name": "x", "feature_dim": 16, "target_magnification": None, "patch_size": None,
                       "effective_magnification": None}, {"s": at_40}, "feats/")
    with pytest.raises(ContractError, match=r"feats/: .*effective magnification s 40x, the model's 20x"):
        check_model_scale({"effective_magnification": 20.0}, {"s": at_40}, "feats/")


def test_a_model_saved_without_the_record_loads_and_is_not_checked(scaled_run, tmp_path):
    from pathalign.evaluate.embed import embed_with_model
    from pathalign.evaluate.heatmap import compute_heatmaps
    from pathalign.models.pathalign_model import load_model

    cohort, model_dir, sids, _ = scaled_run
    old = tmp_path / "old_model"
    shutil.copytree(model_dir, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["patch_encoder"] = {"name": "pathalign-stats", "feature_dim": 16}  # as pathalign wrote it before
    (old / "config.json").write_text(json.dumps(cfg))
    model = load_model(old)
    assert model.patch_encoder == {"name": "pathalign-stats", "feature_dim": 16}
    at_40 = _scaled_features(tmp_path / "f40", sids, target=40.0, level0=40.0)
    assert embed_with_model(old, cohort, tmp_path / "emb.h5", features_dir=at_40, progress=False).counts["wsi"] == 36
    compute_heatmaps(model, at_40 / f"{sids[0]}.h5", blocks=[0])
