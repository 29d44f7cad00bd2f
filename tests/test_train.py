"""Training: alignment on synth data, exact resume, export/load, DDP, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REFERENCE
from helpers import Killed, killed_after_checkpoint, seeded_rng
from pathalign import load_model
from pathalign.cohort import CohortInputError
from pathalign.evaluate.embed import embed_with_model
from pathalign.io.embeddings import read_embeddings
from pathalign.evaluate.retrieval import cross_modal_retrieval, recall_at_k
from pathalign.train.trainer import TrainConfig, Trainer, TrainingError


def _cfg(**kw):
    base = dict(steps=200, batch_size=32, progress=False, seed=0)
    base.update(kw)
    return TrainConfig.from_preset("tiny", **base)


@pytest.fixture(scope="module")
def trained(features_cohort, tmp_path_factory):
    cohort, feats, truth = features_cohort
    run = tmp_path_factory.mktemp("run")
    metrics = Trainer(cohort, run, _cfg()).fit()
    return cohort, run, metrics


def test_training_lowers_loss_and_aligns_held_out_wsi_and_rna(trained, tmp_path):
    cohort, run, metrics = trained
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 200 and log.loss.tail(20).mean() < 0.4 * log.loss.head(20).mean()
    for col in ("loss_wsi-rna", "t_wsi-rna", "b_wsi-rna", "data_wait"):
        assert col in log
    assert (run / "loss_curves.png").is_file() and any((run / "tb").iterdir())
    embed_with_model(run / "model", cohort, tmp_path / "emb.h5", progress=False, name="tiny")
    emb = read_embeddings(tmp_path / "emb.h5")
    val = set(json.loads((run / "model" / "config.json").read_text())["training"]["splits"]["val"])
    res = cross_modal_retrieval(emb, "wsi", "rna", patients=val)
    assert res["n"] >= 20
    assert res["recall@5"] > 2.5 * res["chance@5"] and res["recall@5"] > res["chance@5"] + 0.3, res
    assert len(list((tmp_path / "pathobench_tiny" / "by_slide_id").glob("*.h5"))) == len(emb["wsi"]["ids"])


def test_exported_model_loads_offline_and_matches(trained, features_cohort):
    cohort, run, _ = trained
    model = load_model(run / "model")
    assert not model.training and set(model.modalities) == {"wsi", "rna", "snp", "cnv", "methylation"}
    state = torch.load(sorted((run / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    for k, v in model.state_dict().items():  # model/ holds the validation-selected step
        assert torch.equal(v, state["best_model"][k]), k
    for k, v in load_model(run / "model-last").state_dict().items():  # model-last/ the final one
        assert torch.equal(v, state["model"][k]), k
    rng = seeded_rng()
    x = torch.from_numpy(rng.standard_normal((3, model.config.input_dims["snp"]), dtype=np.float32))
    er = model.encode_molecular("rna", torch.from_numpy(rng.standard_normal((3, model.config.input_dims["rna"]),
                                                                          dtype=np.float32)))
    es = model.encode_molecular("snp", x)
    s = model.similarity("snp", es, "rna", er)  # cosine of l2norm(W z) (DESIGN §4): odd and scale-free in z
    assert s.shape == (3, 3) and torch.allclose(model.similarity("snp", -2.5 * es, "rna", er), -s, atol=1e-5)




@pytest.mark.slow
def test_resume_after_kill_ends_with_identical_weights(features_cohort, tmp_path, monkeypatch):
    cohort, _, _ = features_cohort
    cfg = dict(steps=24, checkpoint_every=8, modality_dropout=0.2, max_tokens=32)
    Trainer(cohort, tmp_path / "full", _cfg(**cfg)).fit()
    original = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_checkpoint(16))
    with pytest.raises(Killed):
        Trainer(cohort, tmp_path / "resumed", _cfg(**cfg)).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    Trainer(cohort, tmp_path / "resumed", _cfg(**cfg), resume=True).fit()
    a = load_model(tmp_path / "full" / "model").state_dict()
    b = load_model(tmp_path / "resumed" / "model").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(pd.read_csv(tmp_path / "resumed" / "log.csv")) == 24


def test_log_csv_keeps_earlier_rows_when_a_resumed_run_dies(features_cohort, tmp_path, monkeypatch):
    """A kill during a resumed run must never lose the rows logged before it."""
    cohort, _, _ = features_cohort
    cfg = dict(steps=8, checkpoint_every=4, max_tokens=32)
    original = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_checkpoint(4))
    with pytest.raises(Killed):
        Trainer(cohort, tmp_path, _cfg(**cfg)).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert list(pd.read_csv(tmp_path / "log.csv").step) == [1, 2, 3, 4]

    def killed_before_first_step(self):
        raise Killed

    monkeypatch.setattr(Trainer, "_loader", killed_before_first_step)
    resumed = Trainer(cohort, tmp_path, _cfg(**cfg), resume=True)
    with pytest.raises(Killed):
        resumed.fit()
    # the process is "killed" here: whatever the open log handle still buffers is lost; the file must hold rows 1-4
    assert list(pd.read_csv(tmp_path / "log.csv").step) == [1, 2, 3, 4]
    resumed._log_fh.close()


def test_nan_loss_stops_with_step_and_patients_and_keeps_last_checkpoint(features_cohort, tmp_path, monkeypatch):
    from pathalign.models.pathalign_model import PathAlignModel

    cohort, _, _ = features_cohort
    real_embed = PathAlignModel.embed_batch

    def poisoned(self, batch):
        emb, valid = real_embed(self, batch)
        return ({m: e * float("nan") for m, e in emb.items()} if batch["step"] == 14 else emb), valid

    monkeypatch.setattr(PathAlignModel, "embed_batch", poisoned)
    with pytest.raises(TrainingError, match=r"step 15; batch patients: TCGA-") as err:
        Trainer(cohort, tmp_path, _cfg(steps=30, checkpoint_every=10)).fit()
    assert "latest.txt" in str(err.value)
    assert (tmp_path / "checkpoints" / "latest.txt").read_text().strip() == "step_0000010.pt"
    torch.load(tmp_path / "checkpoints" / "step_0000010.pt", weights_only=True)


def test_bad_training_inputs(features_cohort, tmp_path):
    cohort, feats, _ = features_cohort
    # a modality no patient has: a cohort with RNA only
    from pathalign.cohort import CohortSources, build_cohort

    man = pd.read_parquet(cohort / "manifest.parquet")
    clinical = tmp_path / "clin.tsv"
    man[["case_id", "cancer_type"]].to_csv(clinical, sep="\t", index=False)
    syn_cohort = tmp_path / "rna_only"
    build_cohort(CohortSources(clinical=str(clinical), rna=str(_rna_file(cohort, tmp_path))), syn_cohort, progress=False)
    with pytest.raises(CohortInputError, match="no patient has methylation"):
        Trainer(syn_cohort, tmp_path / "r1", _cfg(modalities=["rna", "methylation"]))
    # published slide-encoder weights whose input dim does not match the features
    from safetensors.torch import load_file

    ref = {k[len("weights."):]: v for k, v in load_file(str(REFERENCE / "ep25_small.safetensors")).items()
           if k.startswith("weights.")}
    from safetensors.torch import save_file

    save_file(ref, str(tmp_path / "published.safetensors"))
    with pytest.raises(TrainingError, match=r"expects 48-dim patch features, but the cohort's features have 46"):
        Trainer(cohort, tmp_path / "r2", _cfg(slide_encoder_weights=str(tmp_path / "published.safetensors")))
    # a corrupt checkpoint
    run = tmp_path / "r3"
    Trainer(cohort, run, _cfg(steps=4, checkpoint_every=2)).fit()
    latest = run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip()
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(TrainingError, match="corrupt checkpoint"):
        Trainer(cohort, run, _cfg(steps=4, checkpoint_every=2), resume=True)


def _rna_file(cohort, tmp_path):
    from pathalign.cohort import load_cohort

    rna = load_cohort(cohort).matrix("rna")
    path = tmp_path / "rna.tsv"
    rna.T.rename(columns=lambda c: f"{c}-01A").to_csv(path, sep="\t")
    return path


def test_recall_at_k_on_a_constructed_case():
    s = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.0, 0.2, 0.1]])
    # query 0: rank 0; query 1: one better (0.8) -> rank 1; query 2: 0.2 beats 0.1 -> rank 1
    assert recall_at_k(s, ks=(1, 2)) == {"recall@1": 1 / 3, "recall@2": 1.0}


@pytest.mark.slow
def test_torchrun_ddp_matches_single_process(features_cohort, tmp_path):
    cohort, _, _ = features_cohort
    (tmp_path / "cfg.yaml").write_text("model:\n  dropout: 0.0\n")  # per-rank dropout masks differ by design
    common = ["--cohort", str(cohort), "--preset", "tiny", "--steps", "6", "--batch-size", "16", "--checkpoint-every",
              "6", "--quiet", "--max-tokens", "48", "--config", str(tmp_path / "cfg.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pathalign", "train", "--out", str(tmp_path / "ddp"), *common],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "pathalign", "train", "--out", str(tmp_path / "one"), *common],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_model(tmp_path / "ddp" / "model").state_dict()
    b = load_model(tmp_path / "one" / "model").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k


def test_precomputed_rna_embeddings_replace_the_rna_matrix(features_cohort, tmp_path):
    cohort, _, _ = features_cohort
    man = pd.read_parquet(cohort / "manifest.parquet")
    rna_ids = man.case_id[man.has_rna].tolist()
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.standard_normal((len(rna_ids), 7)), columns=[f"e{i}" for i in range(7)])
    table.insert(0, "case_id", rna_ids)
    table.to_csv(tmp_path / "rna_emb.tsv", sep="\t", index=False)
    trainer = Trainer(cohort, tmp_path / "run", _cfg(steps=2, rna_embeddings=str(tmp_path / "rna_emb.tsv")))
    assert trainer.data.input_dims["rna"] == 7 and trainer.data.preprocessing["rna"]["kind"] == "embedding"
    trainer.fit()
    assert load_model(tmp_path / "run" / "model").config.input_dims["rna"] == 7


def test_embed_refuses_features_of_another_patch_encoder(trained, tmp_path):
    import shutil

    from pathalign.errors import PathalignError

    cohort, run, _ = trained
    other = tmp_path / "model"
    shutil.copytree(run / "model", other)
    cfg = json.loads((other / "config.json").read_text())
    assert cfg["patch_encoder"]["name"] == "pathalign-stats"  # recorded from the features files at training
    cfg["patch_encoder"]["name"] = "uni"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PathalignError, match="from encoder 'pathalign-stats', but this model was trained on 'uni'"):
        embed_with_model(other, cohort, tmp_path / "emb.h5", progress=False)
    assert not (tmp_path / "emb.h5").exists()
