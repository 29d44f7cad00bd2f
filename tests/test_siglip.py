"""Multimodal SigLIP loss (on the model's pair heads): the SigLIP formula, ValidPair, missing modalities,
distributed contract."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import close_gloo, init_gloo
from pathalign.models.pair_heads import PairHeads
from pathalign.models.siglip import MultimodalSigLIPLoss


def _loss(heads, loss_fn, emb, valid):
    """The training path: pair heads (model parameters) then the parameter-free loss."""
    return loss_fn(heads(emb, valid))


def _siglip_reference(x, y, log_t, b):
    """-Σ logsigmoid(labels · (t·x yᵀ + b)) / B, written out independently."""
    xn = x / x.norm(dim=1, keepdim=True)
    yn = y / y.norm(dim=1, keepdim=True)
    logits = log_t.exp() * xn @ yn.T + b
    labels = 2 * torch.eye(len(x)) - 1
    return -F.logsigmoid(labels * logits).sum() / len(x)


def test_two_modalities_equal_the_siglip_formula_value_and_gradients():
    torch.manual_seed(0)
    heads, loss_fn = PairHeads({"wsi": 8, "rna": 8}, pair_adapters=False), MultimodalSigLIPLoss()
    assert list(loss_fn.parameters()) == []
    with torch.no_grad():
        heads.log_t["wsi-rna"].fill_(math.log(7.0))
        heads.bias["wsi-rna"].fill_(-3.0)
    x = torch.randn(6, 8, requires_grad=True)
    y = torch.randn(6, 8, requires_grad=True)
    valid = {"wsi": torch.ones(6, dtype=torch.bool), "rna": torch.ones(6, dtype=torch.bool)}
    out = _loss(heads, loss_fn, {"wsi": x, "rna": y}, valid)
    out.loss.backward()
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    t2 = torch.tensor(math.log(7.0), requires_grad=True)
    b2 = torch.tensor(-3.0, requires_grad=True)
    ref = _siglip_reference(x2, y2, t2, b2)
    ref.backward()
    assert torch.allclose(out.loss, ref, rtol=1e-6)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(y.grad, y2.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(heads.log_t["wsi-rna"].grad, t2.grad, rtol=1e-5)
    assert torch.allclose(heads.bias["wsi-rna"].grad, b2.grad, rtol=1e-5)
    assert set(out.per_pair) == {"wsi-rna"}


def test_initial_temperature_and_bias():
    heads = PairHeads({"a": 4, "b": 4, "c": 4})
    assert len(heads.log_t) == 3
    for t, b in zip(heads.log_t.values(), heads.bias.values()):
        assert float(t) == pytest.approx(math.log(10)) and float(b) == -10


def _batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = {"wsi": 12, "rna": 10, "snp": 6}
    emb = {m: torch.randn(b, d, generator=g, requires_grad=True) for m, d in dims.items()}
    valid = {m: torch.rand(b, generator=g) > 0.3 for m in dims}
    return dims, emb, valid


def test_validpair_invalid_entries_have_zero_gradient_and_no_influence():
    dims, emb, valid = _batch()
    torch.manual_seed(1)
    heads, loss_fn = PairHeads(dims, proj_dim=5), MultimodalSigLIPLoss()
    out = _loss(heads, loss_fn, emb, valid)
    out.loss.backward()
    for m in dims:
        assert (emb[m].grad[~valid[m]] == 0).all()
        assert (emb[m].grad[valid[m]] != 0).any()
    grads = [p.grad.clone() for p in heads.parameters()]
    heads.zero_grad()
    changed = {m: torch.where(valid[m][:, None], e.detach(), torch.full_like(e, float("nan"))).requires_grad_()
               for m, e in emb.items()}
    out2 = _loss(heads, loss_fn, changed, valid)
    out2.loss.backward()
    assert torch.equal(out.loss.detach(), out2.loss.detach())
    for g1, p in zip(grads, heads.parameters()):
        assert torch.equal(g1, p.grad)


def test_normaliser_counts_only_valid_positives():
    heads, loss_fn = PairHeads({"a": 4, "b": 4}, pair_adapters=False), MultimodalSigLIPLoss()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    va = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    vb = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    out = _loss(heads, loss_fn, {"a": a, "b": b}, {"a": va, "b": vb})
    # independent: entries (i, j) with va[i] & vb[j], divided by the 2 valid positives (0 and 1)
    logits = 10 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T - 10
    labels = 2 * torch.eye(5) - 1
    mask = va[:, None] & vb[None, :]
    ref = (-F.logsigmoid(labels * logits) * mask).sum() / 2
    assert torch.allclose(out.loss, ref, rtol=1e-6)


def test_absent_modality_and_empty_pairs_stay_finite():
    dims, emb, valid = _batch()
    valid["snp"][:] = False  # a whole modality absent from the batch
    heads, loss_fn = PairHeads(dims, proj_dim=5), MultimodalSigLIPLoss()
    out = _loss(heads, loss_fn, emb, valid)
    assert torch.isfinite(out.loss) and set(out.per_pair) == {"wsi-rna"}
    out.loss.backward()
    assert emb["snp"].grad is None or (emb["snp"].grad == 0).all()
    nothing = {m: torch.zeros(8, dtype=torch.bool) for m in dims}
    out = _loss(heads, loss_fn, emb, nothing)
    assert float(out.loss) == 0 and out.per_pair == {}
    out.loss.backward()


def test_pos_neg_balance_and_single_pair():
    dims, emb, valid = _batch()
    for m in valid:
        valid[m][:] = True
    heads = PairHeads(dims, proj_dim=5, pairs=[("wsi", "rna")])
    out = _loss(heads, MultimodalSigLIPLoss(balance="pos_neg"), emb, valid)
    u = heads.project("wsi", "rna", emb["wsi"])
    w = heads.project("rna", "wsi", emb["rna"])
    logits = 10 * u @ w.T - 10
    eye = torch.eye(8, dtype=torch.bool)
    ref = -F.logsigmoid(logits[eye]).mean() - F.logsigmoid(-logits[~eye]).mean()
    assert torch.allclose(out.loss, ref, rtol=1e-5) and set(out.per_pair) == {"wsi-rna"}


# ------------------------------------------------------------------------------------ distributed
def _setup(seed=0):
    """Upstream encoders, the pair heads, and a global batch (same on every process)."""
    torch.manual_seed(seed)
    enc = torch.nn.ModuleDict({"wsi": torch.nn.Linear(7, 12), "rna": torch.nn.Linear(9, 10), "snp": torch.nn.Linear(5, 6)})
    heads = PairHeads({"wsi": 12, "rna": 10, "snp": 6}, proj_dim=5)
    g = torch.Generator().manual_seed(seed + 1)
    x = {"wsi": torch.randn(8, 7, generator=g), "rna": torch.randn(8, 9, generator=g), "snp": torch.randn(8, 5, generator=g)}
    valid = {m: torch.rand(8, generator=g) > 0.25 for m in x}
    return enc, heads, x, valid


def _grads(enc, heads):
    return {n: p.grad.clone() for n, p in [*enc.named_parameters(), *heads.named_parameters()] if p.grad is not None}


def _worker(rank, world, init_file, out_path):
    import torch.distributed as dist

    init_gloo(rank, world, init_file)
    enc, heads, x, valid = _setup()
    loss_fn = MultimodalSigLIPLoss(rank=rank, world_size=world)
    rows = slice(rank * 4, rank * 4 + 4)
    emb = {m: enc[m](x[m][rows]) for m in x}
    out = _loss(heads, loss_fn, emb, {m: v[rows] for m, v in valid.items()})
    out.loss.backward()
    for p in [*enc.parameters(), *heads.parameters()]:  # DDP-style averaging
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
    torch.save({"loss": out.loss.detach(), "per_pair": out.per_pair, "grads": _grads(enc, heads)}, f"{out_path}.{rank}")
    close_gloo()


def test_distributed_loss_and_gradients_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    enc, heads, x, valid = _setup()
    out = _loss(heads, MultimodalSigLIPLoss(), {m: enc[m](x[m]) for m in x}, valid)
    out.loss.backward()
    ref = _grads(enc, heads)
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path / "r")), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=True)
        assert torch.allclose(got["loss"], out.loss.detach(), rtol=1e-5)
        for k, v in out.per_pair.items():
            assert torch.allclose(got["per_pair"][k], v, rtol=1e-5)
        assert set(got["grads"]) == set(ref)
        for name, g in ref.items():
            assert torch.allclose(got["grads"][name], g, rtol=1e-4, atol=1e-6), name
