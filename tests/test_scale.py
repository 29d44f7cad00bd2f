"""Training at scale: bounded feature reading, gradient caching, activation checkpointing, multi-node."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from helpers import Killed, init_gloo, killed_after_checkpoint
from pathalign.io.feature_reader import FeatureReader
from pathalign.io.features import read_patch_features, write_patch_file


def _random_file(path, rng, n, dim, dtype, layout):
    coords = np.stack([rng.permutation(n) % 97, rng.permutation(n) // 97], 1) * 256
    feats = rng.standard_normal((n, dim)).astype(dtype)
    if layout == "pathalign":
        write_patch_file(path, coords, rng.integers(0, 5, n), {"patch_size_level0": 256}, feats)
    else:  # Trident-like: no fragment ids (grid components), features stored [1, N, C]
        with h5py.File(path, "w") as fh:
            fh.create_dataset("coords", data=coords).attrs["patch_size_level0"] = 256
            fh.create_dataset("features", data=feats[None], chunks=(1, 64, dim))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reader_rows_equal_full_read_then_subset(tmp_path, seed):
    rng = np.random.default_rng(seed)
    slides = {}
    for s, (dtype, layout) in enumerate([(np.float16, "pathalign"), (np.float32, "pathalign"), (np.float16, "trident")]):
        n = int(rng.integers(50, 700))
        _random_file(tmp_path / f"s{s}.h5", rng, n, int(rng.integers(3, 40)), dtype, layout)
        slides[f"s{s}"] = n
    for budget in (0, 1 << 30):  # rows read from disk / whole slides cached
        reader = FeatureReader(tmp_path, cache_bytes=budget)
        for _ in range(3):
            for sid, n in slides.items():
                old = read_patch_features(tmp_path / f"{sid}.h5").as_inputs()  # the old path: full read
                for k in (None, 1, n // 3, n):
                    keep = None if k is None else np.sort(rng.choice(n, k, replace=False))
                    ref = old if keep is None else tuple(a[keep] for a in old)
                    got = reader.read(sid, keep)
                    for a, b, what in zip(got, ref, ("features", "coords", "fragment")):
                        assert a.dtype == b.dtype and a.shape == b.shape, (seed, sid, k, what)
                        assert np.array_equal(a, b), f"seed {seed}: {sid} {what} rows={k} budget={budget}"
        if budget == 0:
            assert reader.stats["full_reads"] == 3 * len(slides) and reader.stats["cache_hits"] == 0
        else:
            assert reader.stats["full_reads"] == len(slides) and reader.stats["rows_read"] == 0


def test_reader_cache_stays_within_budget_and_workers_share_it(tmp_path):
    rng = np.random.default_rng(5)
    for s in range(12):
        _random_file(tmp_path / f"s{s}.h5", rng, 400, 32, np.float16, "pathalign")  # 25.6 kB of features each
    reader = FeatureReader(tmp_path, cache_bytes=200_000)
    reader.share(2)  # two loader workers: 100 kB each
    assert reader.budget == 100_000
    for _ in range(2):
        for s in range(12):
            reader.read(f"s{s}", np.arange(0, 400, 7))
            assert reader.cached_bytes <= reader.budget
    assert 0 < len(reader._feats) < 12 and reader.stats["rows_read"] > 0
    with pytest.raises(ValueError, match="increasing"):
        reader.read("s0", np.array([3, 1]))


def _tiny_model(dropout: float = 0.0, **slide_overrides):
    from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel

    cfg = PathAlignConfig(modalities=["wsi", "rna", "snp"], input_dims={"wsi": 12, "rna": 10, "snp": 6},
                          slide_encoder={"preset": "tiny", "dim": 16, "depth": 2, "num_heads": 2, "n_registers": 1,
                                         "dropout": dropout, **slide_overrides},
                          embed_dim=16, proj_dim=8, dropout=dropout)
    return PathAlignModel(cfg)


def _random_batch(rng, b: int, dim: int = 12, max_n: int = 40):
    from helpers import random_slide

    valid = {m: torch.from_numpy(rng.random(b) < 0.8) for m in ("wsi", "rna", "snp")}
    valid["wsi"][:2] = True
    rows = torch.nonzero(valid["wsi"]).flatten()
    slides = [random_slide(rng, int(rng.integers(4, max_n)), dim, int(rng.integers(1, 4))) for _ in rows]
    return {"valid": valid, "rna": torch.from_numpy(rng.standard_normal((b, 10)).astype(np.float32)),
            "snp": torch.from_numpy(rng.standard_normal((b, 6)).astype(np.float32)),
            "slides": slides, "slide_rows": rows, "slide_ids": [f"SLIDE-{int(r)}" for r in rows],
            "patients": [f"P{i}" for i in range(b)], "step": 0}


def test_nan_features_name_the_slide_in_training_and_embed(tmp_path):
    from pathalign.evaluate.embed import _slide_embeddings
    from pathalign.models.packing import SlideInputError

    rng = np.random.default_rng(7)
    model = _tiny_model()
    batch = _random_batch(rng, 6)
    batch["slides"][1][0][3, 2] = float("nan")
    with pytest.raises(SlideInputError, match=f"'{batch['slide_ids'][1]}'.*NaN"):
        model(batch)
    for name in ["good-a", "bad-b", "good-c"]:
        f, c, g = random_slide_np(rng, 12)
        if name.startswith("bad"):
            f[0, 0] = np.nan
        write_patch_file(tmp_path / f"{name}.h5", c, g, {"patch_size_level0": 256}, f)
    with pytest.raises(SlideInputError, match="'bad-b'.*NaN"):
        _slide_embeddings(model.eval().encode_slide, ["good-a", "bad-b", "good-c"], tmp_path, 8, False)


def random_slide_np(rng, dim):
    from helpers import random_slide

    return tuple(t.numpy() for t in random_slide(rng, 20, dim, 2))


# ---------------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_recomputes_blocks_with_equal_gradients():
    from conftest import rel_err

    rng = np.random.default_rng(11)
    model = _tiny_model(dropout=0.2).train()
    batch = _random_batch(rng, 6)
    calls = []
    for blk in model.slide_encoder.blocks:
        blk.register_forward_pre_hook(lambda *a: calls.append(1))  # recomputation may stop early
    grads = []
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        model.slide_encoder.checkpoint_activations = on
        calls.clear()
        torch.manual_seed(3)  # same dropout masks in both runs
        _full_loss(model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert len(calls) == (2 if on else 1) * len(model.slide_encoder.blocks), f"checkpointing={on}: {len(calls)} block calls"
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert rel_err(grads[1][n], grads[0][n]) < 1e-6, n


# ---------------------------------------------------------------- gradient caching
def _halves(model, rank: int = 0, world: int = 1):
    """The model's two halves as gradient caching uses them: embed a (micro-)batch; loss from embeddings."""
    from pathalign.models.siglip import MultimodalSigLIPLoss

    loss_fn = MultimodalSigLIPLoss(model.config.balance, rank, world)
    return (lambda mb: model(mb, project=False)), (lambda emb, valid: loss_fn(model(embeddings=emb, valid=valid)))


def _full_loss(model, batch):
    """The plain path: the whole batch in one forward, the loss on it."""
    from pathalign.models.siglip import MultimodalSigLIPLoss

    return MultimodalSigLIPLoss(model.config.balance)(model(batch)).loss


def _micro(batch, micro, budget=None):
    from pathalign.train.gradcache import plan_micro_batches, row_tokens, slice_batch

    return [slice_batch(batch, a, b) for a, b in plan_micro_batches(row_tokens(batch, 2), micro, budget)]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got, ref, what):
    from conftest import rel_err

    assert got.keys() == ref.keys(), (what, sorted(set(got) ^ set(ref)))
    flat = rel_err(torch.cat([got[n].flatten() for n in ref]), torch.cat([ref[n].flatten() for n in ref]))
    assert flat < 1e-5, f"{what}: all parameters rel err {flat:.2e}"
    for n in ref:  # per tensor, a little looser: a scalar such as a temperature sums many cancelling terms
        assert rel_err(got[n], ref[n]) < 1e-4, f"{what}: {n} rel err {rel_err(got[n], ref[n]):.2e}"


@pytest.mark.parametrize("seed", [0, 1])
def test_gradcache_equals_full_batch_gradients(seed):
    from pathalign.train.gradcache import gradcache_step

    rng = np.random.default_rng(seed)
    batch = _random_batch(rng, 12)
    # no dropout: against the plain one-pass forward on the whole batch
    torch.manual_seed(seed)
    model = _tiny_model(dropout=0.0).train()
    _full_loss(model, batch).backward()
    ref = _grads(model)
    embed, loss_from = _halves(model)
    for micro, budget in ((1, None), (5, None), (12, 60)):
        model.zero_grad(set_to_none=True)
        out = gradcache_step(embed, loss_from, _micro(batch, micro, budget))
        _assert_same_grads(_grads(model), ref, f"seed {seed}, micro-batch {micro}, token budget {budget}")
    # dropout on: against one backward through the same micro-batches kept in one graph (same RNG draws)
    torch.manual_seed(seed)
    model = _tiny_model(dropout=0.3).train()
    embed, loss_from = _halves(model)
    parts = _micro(batch, 4)
    torch.manual_seed(100 + seed)
    embs = [embed(mb) for mb in parts]
    cat = {m: torch.cat([e[0][m] for e in embs]) for m in embs[0][0]}
    valid = {m: torch.cat([e[1][m] for e in embs]) for m in embs[0][1]}
    ref_loss = loss_from(cat, valid).loss
    ref_loss.backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(100 + seed)
    out = gradcache_step(embed, loss_from, parts)
    assert torch.allclose(out.loss, ref_loss, rtol=1e-6), (seed, float(out.loss), float(ref_loss))
    _assert_same_grads(_grads(model), ref, f"seed {seed}, dropout 0.3")


def test_micro_batch_plan_respects_rows_and_token_budget():
    from pathalign.train.gradcache import plan_micro_batches

    tokens = [100, 0, 3000, 50, 50, 50, 2000, 10]
    plan = plan_micro_batches(tokens, 3, 2100)
    assert plan == [(0, 2), (2, 3), (3, 6), (6, 8)], plan
    assert [r for a, b in plan for r in range(a, b)] == list(range(len(tokens)))
    for a, b in plan:
        assert b - a <= 3 and (b - a == 1 or sum(tokens[a:b]) <= 2100)


def _ddp_gradcache_worker(rank: int, world: int, init_file: str, out_dir: str, seed: int) -> None:
    import torch.distributed as dist

    from pathalign.train.gradcache import (
        allreduce_gradients,
        gradcache_step,
        slice_batch,
    )

    torch.set_num_threads(1)
    init_gloo(rank, world, init_file)
    try:
        batch = _random_batch(np.random.default_rng(seed), 12)
        torch.manual_seed(seed)
        model = _tiny_model(dropout=0.0).train()
        per = 12 // world
        local = slice_batch(batch, rank * per, (rank + 1) * per)
        gradcache_step(*_halves(model, rank, world), _micro(local, 2))
        allreduce_gradients(model.parameters(), world)
        torch.save(_grads(model), f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # neither rank tears the group down while the other still talks to it (gloo aborts then)
    finally:
        dist.destroy_process_group()


def test_gradcache_under_two_process_gloo_equals_single_process_full_batch(tmp_path):
    import torch.multiprocessing as mp

    seed = 4
    mp.spawn(_ddp_gradcache_worker, args=(2, str(tmp_path / "init"), str(tmp_path), seed), nprocs=2, join=True)
    batch = _random_batch(np.random.default_rng(seed), 12)
    torch.manual_seed(seed)
    model = _tiny_model(dropout=0.0).train()
    _full_loss(model, batch).backward()
    ref = _grads(model)
    for rank in range(2):
        _assert_same_grads(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), ref, f"seed {seed}, rank {rank}")




@pytest.fixture(scope="module")
def quick_cohort(tmp_path_factory):
    """48 patients with RNA, CNV and one slide each (16-dim features, 24-120 patches, 1-3 fragments)."""
    import pandas as pd

    from helpers import random_slide
    from pathalign.cohort import CohortSources, build_cohort

    root = tmp_path_factory.mktemp("quick")
    rng = np.random.default_rng(0)
    cases = [f"TCGA-QC-{i:04d}" for i in range(48)]
    for c in cases:
        f, xy, g = random_slide(rng, int(rng.integers(24, 120)), 16, int(rng.integers(1, 4)))
        write_patch_file(root / "features" / f"{c}-DX1.h5", xy.numpy(), g.numpy(), {"patch_size_level0": 256},
                         f.numpy().astype(np.float16))
    pd.DataFrame({"case_id": cases}).to_csv(root / "clin.tsv", sep="\t", index=False)
    pd.DataFrame({"slide_id": [f"{c}-DX1" for c in cases], "case_id": cases}).to_csv(root / "slides.tsv", sep="\t", index=False)
    samples = [f"{c}-01A" for c in cases]
    pd.DataFrame(rng.gamma(2, 20, (60, 48)), index=[f"G{i}" for i in range(60)], columns=samples).rename_axis("gene").to_csv(root / "rna.tsv", sep="\t")
    pd.DataFrame(rng.integers(-2, 3, (30, 48)), index=[f"C{i}" for i in range(30)], columns=samples).rename_axis("gene").to_csv(root / "cnv.tsv", sep="\t")
    build_cohort(CohortSources(clinical=str(root / "clin.tsv"), slides=str(root / "slides.tsv"), features=str(root / "features"),
                               rna=str(root / "rna.tsv"), cnv=str(root / "cnv.tsv")), root / "cohort", progress=False)
    return root / "cohort"


@pytest.mark.slow
def test_resume_after_kill_with_gradient_caching_is_bit_identical(quick_cohort, tmp_path, monkeypatch):
    from pathalign import load_model
    from pathalign.train.trainer import TrainConfig, Trainer

    cohort = quick_cohort
    kw = dict(steps=12, batch_size=16, checkpoint_every=4, modality_dropout=0.2, max_tokens=32, progress=False, seed=0,
              val_fraction=0.1, micro_batch=5, micro_batch_tokens=90, checkpoint_activations=True, feature_cache_mb=0)
    Trainer(cohort, tmp_path / "full", TrainConfig.from_preset("tiny", **kw)).fit()
    original = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_checkpoint(8))
    with pytest.raises(Killed):
        Trainer(cohort, tmp_path / "resumed", TrainConfig.from_preset("tiny", **kw)).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    Trainer(cohort, tmp_path / "resumed", TrainConfig.from_preset("tiny", **kw), resume=True).fit()
    a = load_model(tmp_path / "full" / "model").state_dict()
    b = load_model(tmp_path / "resumed" / "model").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gradient_caching_in_the_trainer_follows_the_one_pass_run(quick_cohort, tmp_path):
    """Without dropout the micro-batched run computes the same gradients, so the weights stay together."""
    from pathalign import load_model
    from pathalign.train.trainer import TrainConfig, Trainer

    cohort = quick_cohort
    kw = dict(steps=4, batch_size=16, max_tokens=32, progress=False, seed=1, modality_dropout=0.2, val_fraction=0.1,
              model_overrides={"dropout": 0.0})
    Trainer(cohort, tmp_path / "one", TrainConfig.from_preset("tiny", **kw)).fit()
    Trainer(cohort, tmp_path / "gc", TrainConfig.from_preset("tiny", micro_batch=3, **kw)).fit()
    a = load_model(tmp_path / "one" / "model").state_dict()
    b = load_model(tmp_path / "gc" / "model").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.skipif(not __import__("os").environ.get("PATHALIGN_MULTINODE_TESTS"),
                    reason="two torchrun 'nodes' on localhost (about 1-3 min on 2 cores): set PATHALIGN_MULTINODE_TESTS=1")
def test_two_torchrun_nodes_on_localhost_end_with_the_weights_of_one_process(quick_cohort, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from pathalign import load_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "cfg.yaml").write_text("model:\n  dropout: 0.0\n")  # per-rank dropout masks differ by design
    common = ["-m", "pathalign", "train", "--cohort", str(quick_cohort), "--preset", "tiny", "--steps", "4",
              "--batch-size", "16", "--max-tokens", "32", "--checkpoint-every", "4", "--quiet",
              "--config", str(tmp_path / "cfg.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "test",
                               "--rdzv_conf", f"is_host={int(rank == 0)}", "--local_addr", "127.0.0.1",
                               *common, "--out", str(tmp_path / "two_nodes"), "--micro-batch", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in range(2)]
    outs = [n.communicate(timeout=600) for n in nodes]
    for n, (out, err) in zip(nodes, outs):
        assert n.returncode == 0, out[-2000:] + err[-3000:]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=600, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_model(tmp_path / "two_nodes" / "model").state_dict()
    b = load_model(tmp_path / "one" / "model").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5), k
