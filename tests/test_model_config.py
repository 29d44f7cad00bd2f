"""The model owns its pair heads; weight decay by module type; saved-model compatibility; configs."""
from __future__ import annotations

import json

import pytest
import torch

from pathalign.models.pair_heads import PairHeads, PairProjection
from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel, load_model
from pathalign.models.siglip import MultimodalSigLIPLoss
from pathalign.train.trainer import param_groups

DIMS = {"wsi": 12, "rna": 9, "snp": 5}


def _tiny_model(seed: int = 0, **overrides) -> PathAlignModel:
    torch.manual_seed(seed)
    cfg = PathAlignConfig.from_preset("tiny", ["wsi", "rna", "snp"], DIMS, **overrides)
    return PathAlignModel(cfg)


def _batch(seed: int, b: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    slides = []
    for _ in range(b):
        n = 6
        coords = torch.randint(0, 2000, (n, 2), generator=g)
        slides.append((torch.randn(n, DIMS["wsi"], generator=g), coords, torch.zeros(n, dtype=torch.long)))
    return {"valid": {m: torch.ones(b, dtype=torch.bool) for m in DIMS}, "slides": slides,
            "slide_rows": torch.arange(b), "rna": torch.randn(b, DIMS["rna"], generator=g),
            "snp": torch.randn(b, DIMS["snp"], generator=g)}


def test_model_owns_pair_heads_and_loss_holds_no_parameters():
    model = _tiny_model().eval()
    assert isinstance(model.pair_heads, PairHeads) and not hasattr(model, "loss")
    assert any(k.startswith("pair_heads.adapters.wsi->rna") for k in model.state_dict())
    loss_fn = MultimodalSigLIPLoss()
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    batch = _batch(seed=1)
    pairs = model(batch)
    assert [p.key for p in pairs] == ["wsi-rna", "wsi-snp", "rna-snp"] and isinstance(pairs[0], PairProjection)
    # the three ways in through forward agree: embed -> heads equals the whole path
    emb, valid = model(batch, project=False)
    again = model(embeddings=emb, valid=valid)
    for p, q in zip(pairs, again):
        assert torch.equal(p.u, q.u) and torch.equal(p.w, q.w), p.key
    value = loss_fn(pairs).loss
    assert torch.equal(value, loss_fn(again).loss)
    # similarity goes through the same heads, in either order of the pair
    s = model.similarity("rna", emb["rna"], "wsi", emb["wsi"])
    ref = torch.nn.functional.normalize(emb["rna"] @ model.pair_heads.adapters["rna->wsi"].weight.T, dim=-1) @ \
        torch.nn.functional.normalize(emb["wsi"] @ model.pair_heads.adapters["wsi->rna"].weight.T, dim=-1).T
    assert torch.allclose(s, ref, atol=1e-6)
    t_ab, _ = model.pair_heads.temperature_bias("wsi", "rna")
    t_ba, _ = model.pair_heads.temperature_bias("rna", "wsi")
    assert t_ab is t_ba
    with pytest.raises(KeyError, match="no pair head for 'rna' and 'cnv'"):
        model.pair_heads.temperature_bias("rna", "cnv")


def test_shared_temperature_and_identity_heads():
    heads = PairHeads({"a": 4, "b": 4, "c": 4}, shared_temperature=True, pair_adapters=False)
    assert list(heads.log_t) == ["shared"] and len(heads.adapters) == 0 and heads.proj_dim == 4
    assert heads.temperature_bias("a", "b")[0] is heads.temperature_bias("b", "c")[0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, generator=g)
    assert torch.allclose(heads.project("a", "c", z), z / z.norm(dim=1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="one dim for every modality"):
        PairHeads({"a": 4, "b": 5}, pair_adapters=False)


def test_weight_decay_groups_by_module_type():
    model = torch.nn.ModuleDict({"pa": _tiny_model(), "emb": torch.nn.Embedding(10, 4)})
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    no_ids = {id(p) for p in no_decay["params"]}
    names = dict(model.named_parameters())
    assert len(decay_ids | no_ids) == len(names) and not decay_ids & no_ids
    in_decay = {n for n, p in names.items() if id(p) in decay_ids}
    for n in names:  # the rule, stated independently: Linear weights decay, nothing else does
        module = model.get_submodule(n.rsplit(".", 1)[0])
        expected = isinstance(module, torch.nn.Linear) and n.endswith(".weight")
        assert (n in in_decay) == expected, n
    for n in ("pa.slide_encoder.cls_token", "pa.slide_encoder.register_tokens", "pa.pair_heads.log_t.wsi-rna",
              "pa.pair_heads.bias.wsi-rna", "emb.weight", "pa.slide_encoder.norm.weight"):
        assert n not in in_decay, n
    assert "pa.pair_heads.adapters.wsi->rna.weight" in in_decay


def _save_like_main_before_pair_heads(model: PathAlignModel, path) -> None:
    """A model folder exactly as main wrote it before this change: flat config.json, ``loss.*`` keys."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    path.mkdir(parents=True)
    sd = {("loss." + k[len("pair_heads."):] if k.startswith("pair_heads.") else k): v.contiguous()
          for k, v in model.state_dict().items()}
    assert any(k.startswith("loss.log_t.") for k in sd)
    save_file(sd, str(path / "model.safetensors"))
    cfg = {"kind": "pathalign", **asdict(model.config), "splits": {"train": ["A"], "val": ["B"]},
           "train_config": {"preset": "tiny", "steps": 3}, "features_dim": DIMS["wsi"]}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "preprocessing.json").write_text(json.dumps({"rna": {"kind": "rna"}}))


def test_model_folder_saved_before_pair_heads_moved_still_loads(tmp_path):
    model = _tiny_model(seed=3).eval()
    _save_like_main_before_pair_heads(model, tmp_path / "old")
    loaded = load_model(tmp_path / "old")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    emb, _ = model(_batch(seed=2), project=False)
    with torch.no_grad():
        assert torch.equal(model.similarity("wsi", emb["wsi"], "rna", emb["rna"]),
                           loaded.similarity("wsi", emb["wsi"], "rna", emb["rna"]))
