"""One Hub resolver for every source: model folders (``load_model``) and weights (``--weights``) take the same
spellings (``ORG/NAME``, ``hf-hub:ORG/NAME[@rev]``, a local path first) and the same environment
(``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``). No network: ``huggingface_hub.snapshot_download`` is replaced."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pathalign
from pathalign.io.hub import resolve_source


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """``snapshot_download`` serving ``tmp_path/hub/<org>--<name>`` and recording each call's arguments."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None, local_files_only=False,
                          **kw):
        calls.append({"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir,
                      "local_files_only": local_files_only})
        folder = tmp_path / "hub" / repo_id.replace("/", "--")
        if not folder.is_dir():
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError(f"{repo_id} not cached")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    model = pathalign.create_model("tiny", modalities=["wsi", "rna"], input_dims={"wsi": 10, "rna": 4})
    model.save_pretrained(tmp_path / "hub" / "my-lab--tiny")
    return calls, model


def _same(a, b):
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["my-lab/tiny", "hf-hub:my-lab/tiny", "hf_hub:my-lab/tiny", "my-lab/tiny@v1"])
def test_load_model_takes_the_ids_weights_take(fake_hub, name):
    calls, model = fake_hub
    assert resolve_source(name).name == "my-lab--tiny"  # what --weights does
    _same(model, pathalign.load_model(name))
    assert calls[-1]["repo_id"] == "my-lab/tiny"
    assert calls[-1]["revision"] == ("v1" if name.endswith("@v1") else None)


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(fake_hub, tmp_path, monkeypatch):
    calls, model = fake_hub
    (tmp_path / "my-lab").mkdir()
    model.save_pretrained(tmp_path / "my-lab" / "tiny")
    monkeypatch.chdir(tmp_path)
    _same(model, pathalign.load_model("my-lab/tiny"))
    assert not calls


def test_offline_and_cache_are_read_when_resolving(fake_hub, tmp_path, monkeypatch):
    calls, _ = fake_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    pathalign.load_model("hf-hub:my-lab/tiny")
    assert calls[-1]["local_files_only"] is True and calls[-1]["cache_dir"] == str(tmp_path / "cache")
    from pathalign.io.model_folder import ConfigError

    with pytest.raises(ConfigError, match="my-lab/missing: no such local folder .* HF_HUB_OFFLINE"):
        pathalign.load_model("my-lab/missing")
    with pytest.raises(ConfigError, match="hf-hub:my-lab/missing: cannot resolve on the Hugging Face Hub .* HF_HUB_OFFLINE"):
        pathalign.load_model("hf-hub:my-lab/missing")  # spelled as a Hub id: the Hub comes first


def test_a_missing_two_part_path_is_said_missing_as_a_folder_first(fake_hub, tmp_path, monkeypatch):
    """``--model run/model`` (the README's spelling) without such a folder: the error leads with the folder,
    then says the Hub id of the same spelling was tried too."""
    from pathalign.io.model_folder import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        pathalign.load_model("run/model")
    message = str(e.value)
    assert message.startswith(f"run/model: no such local folder ({tmp_path / 'run' / 'model'})"), message
    assert "not found as a Hub id" in message and message.index("local folder") < message.index("Hub")
    assert fake_hub[0][-1]["repo_id"] == "run/model"  # still tried on the Hub: bare ORG/NAME ids keep working


def test_a_missing_deeper_path_is_not_a_hub_id(fake_hub, tmp_path):
    from pathalign.io.model_folder import ConfigError

    with pytest.raises(ConfigError, match="not a pathalign model folder"):
        pathalign.load_model(Path(tmp_path / "runs" / "x" / "model"))
    assert not fake_hub[0]


def test_rna_foundation_model_takes_a_hub_id(fake_hub, tmp_path):
    from pathalign.io.model_folder import write_pretrain_records
    from pathalign.models.rna_fm import RNAFMConfig, RNAFoundationModel
    from pathalign.train.rna_pretrain import val_patients_seen

    calls, _ = fake_hub
    fm = RNAFoundationModel(RNAFMConfig(n_genes=5, dim=8, depth=1))
    folder = tmp_path / "hub" / "my-lab--fm"
    fm.save(folder, {"kind": "rna", "features": list("ABCDE")})
    write_pretrain_records(folder, {"ratio": 0.5}, {"fitted_on": ["P1", "P3"]})
    loaded, prep = RNAFoundationModel.load("my-lab/fm")
    assert calls[-1]["repo_id"] == "my-lab/fm" and prep["features"] == list("ABCDE")
    _same(fm, loaded)
    assert val_patients_seen("hf-hub:my-lab/fm", ["P1", "P2", "P3"]) == ["P1", "P3"]


def test_baseline_options_come_from_a_hub_model_or_say_defaults(fake_hub, tmp_path):
    import numpy as np
    import pandas as pd

    from pathalign.evaluate.baselines import model_transform_options
    from pathalign.models.preprocessing import make_transform

    _, model = fake_hub
    rna = make_transform("rna", {}, n_genes=3).fit(pd.DataFrame(np.arange(30.0).reshape(6, 5) % 7, columns=list("ABCDE")))
    trained = type(model)(model.config, {"rna": rna.state_dict()})
    trained.load_state_dict(model.state_dict())
    trained.save_pretrained(tmp_path / "hub" / "my-lab--trained")
    options, source = model_transform_options("my-lab/trained")
    assert options["rna"]["n_genes"] == 3 and "features" not in options["rna"]
    assert source.startswith("the model's preprocessing options")
    # a model that records no preprocessing: defaults, and the report says so
    options, source = model_transform_options("my-lab/tiny")
    assert options == {} and source.startswith("transform defaults") and "records no preprocessing" in source
    options, source = model_transform_options(tmp_path / "nowhere")
    assert options == {} and source.startswith("transform defaults")


def test_baseline_options_of_an_old_flat_model_folder(tmp_path):
    import json
    from dataclasses import asdict

    from pathalign.evaluate.baselines import model_transform_options

    model = pathalign.create_model("tiny", modalities=["wsi", "rna"], input_dims={"wsi": 10, "rna": 4})
    old = tmp_path / "old"
    model.save_pretrained(old)
    (old / "config.json").write_text(json.dumps({"kind": "pathalign", **asdict(model.config)}))
    (old / "preprocessing.json").write_text(json.dumps({"rna": {"kind": "rna", "n_genes": 4, "features": list("ABCD")}}))
    options, source = model_transform_options(old)
    assert options == {"rna": {"n_genes": 4}} and source.startswith("the model's preprocessing options")
