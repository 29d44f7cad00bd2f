"""The model owns its pair heads; weight decay by module type; saved-model compatibility; configs."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import close_gloo, init_gloo
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


# ------------------------------------------------------------------------------------ config.json sections
def _trained_like(seed: int = 0) -> PathAlignModel:
    """A tiny model carrying what a training run records (preprocessing, patch encoder, training info)."""
    import numpy as np
    import pandas as pd

    from pathalign.models.preprocessing import make_transform

    rng = np.random.default_rng(seed)
    rna = pd.DataFrame(rng.gamma(2.0, 20.0, (12, 9)), columns=[f"G{i}" for i in range(9)])
    snp = pd.DataFrame((rng.random((12, 5)) > 0.7).astype(float), columns=[f"M{i}" for i in range(5)])
    prep = {"rna": make_transform("rna", {}, n_genes=9).fit(rna).state_dict(),
            "snp": make_transform("snp", {}).fit(snp).state_dict()}
    torch.manual_seed(seed)
    cfg = PathAlignConfig.from_preset("tiny", ["wsi", "rna", "snp"], {"wsi": DIMS["wsi"], "rna": 9,
                                                                      "snp": len(prep["snp"]["features"])})
    training = {"config": {"preset": "tiny", "steps": 3}, "splits": {"train": ["A"], "val": ["B"]},
                "data": {"patients": 12, "patients_with_rna": 12}}
    return PathAlignModel(cfg, prep, {"name": "builtin", "feature_dim": DIMS["wsi"]}, training).eval()


def test_save_pretrained_writes_sections_card_and_reloads(tmp_path):
    from pathalign.io.model_folder import SECTIONS

    model = _trained_like()
    model.save_pretrained(tmp_path / "m", metrics={"wsi-rna recall@5": 0.5})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert sorted(cfg) == sorted(SECTIONS) and cfg["architecture"] == "pathalign"
    assert cfg["patch_encoder"] == {"name": "builtin", "feature_dim": DIMS["wsi"]}
    assert cfg["training"]["metrics"] == {"wsi-rna recall@5": 0.5} and cfg["training"]["splits"]["val"] == ["B"]
    assert "preset" not in cfg["model_args"]["slide_encoder"]  # fully resolved: no dependence on preset tables
    card = (tmp_path / "m" / "README.md").read_text()
    for needed in ("`builtin`", "rna", "snp", "recall@5", "patients_with_rna"):
        assert needed in card, needed
    assert 'model.encode_molecular("rna", rna)' in card and "encode_rna" not in card  # no deprecated call shown
    assert not (tmp_path / "m" / "preprocessing.json").exists()
    loaded = load_model(tmp_path / "m")
    assert loaded.config.to_dict() == model.config.to_dict() and loaded.preprocessing == model.preprocessing
    assert loaded.config.slide_encoder_config() == model.config.slide_encoder_config()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.training_info["splits"]["val"] == ["B"] and loaded.patch_encoder["feature_dim"] == DIMS["wsi"]


def test_config_json_unknown_keys_bad_json_and_kind_are_refused(tmp_path):
    from pathalign.io.model_folder import ConfigError
    from pathalign.models.rna_fm import RNAFMConfig, RNAFoundationModel

    model = _trained_like()
    folder = model.save_pretrained(tmp_path / "m")
    good = json.loads((folder / "config.json").read_text())

    def write(cfg):
        (folder / "config.json").write_text(json.dumps(cfg))

    write({**good, "colour": "blue"})
    with pytest.raises(ConfigError, match=r"config.json: unknown key\(s\) \['colour'\]"):
        load_model(folder)
    write({**good, "model_args": {**good["model_args"], "embed_dimm": 3}})
    with pytest.raises(ConfigError, match=r"model_args: unknown key\(s\) \['embed_dimm'\]"):
        load_model(folder)
    enc = {**good["model_args"]["slide_encoder"], "depht": 2}
    write({**good, "model_args": {**good["model_args"], "slide_encoder": enc}})
    with pytest.raises(ConfigError, match=r"\['depht'\]"):
        load_model(folder)
    write({**good, "training": {**good["training"], "optimiser": "sgd"}})
    with pytest.raises(ConfigError, match=r"training: unknown key\(s\) \['optimiser'\]"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps(good)[:-20])
    with pytest.raises(ConfigError, match=r"m/config.json: invalid JSON"):
        load_model(folder)
    # an RNA foundation model folder is not a pathalign model, and the other way round
    RNAFoundationModel(RNAFMConfig(n_genes=9, dim=8, depth=1)).save(tmp_path / "fm", model.preprocessing["rna"])
    with pytest.raises(ConfigError, match="holds a 'pathalign-rna-fm' model, not a 'pathalign' one"):
        load_model(tmp_path / "fm")
    write(good)
    with pytest.raises(ConfigError, match="holds a 'pathalign' model, not a 'pathalign-rna-fm' one"):
        RNAFoundationModel.load(folder)
    with pytest.raises(ConfigError, match="not a pathalign model folder"):
        load_model(tmp_path)


def test_old_rna_fm_folder_still_loads(tmp_path):
    from dataclasses import asdict

    from safetensors.torch import save_file

    from pathalign.models.rna_fm import RNAFMConfig, RNAFoundationModel

    torch.manual_seed(0)
    fm = RNAFoundationModel(RNAFMConfig(n_genes=6, dim=8, depth=1)).eval()
    old = tmp_path / "fm"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in fm.state_dict().items()}, str(old / "model.safetensors"))
    (old / "config.json").write_text(json.dumps({"kind": "pathalign-rna-fm", **asdict(fm.config),
                                                 "metrics": {"ratio": 0.5}}))
    (old / "preprocessing.json").write_text(json.dumps({"kind": "rna", "features": ["A"]}))
    loaded, prep = RNAFoundationModel.load(old)
    assert prep == {"kind": "rna", "features": ["A"]} and loaded.config == fm.config
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.encode(x), fm.encode(x))


# ------------------------------------------------------------------------------------ configs are not mutated
def test_configs_are_frozen_and_replaced_with_checks():
    import dataclasses

    from pathalign.models import SLIDE_ENCODER_PRESETS, SlideEncoder
    from pathalign.train.trainer import TrainConfig

    cfg = TrainConfig.from_preset("tiny", steps=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.device = "cuda:1"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\]"):
        TrainConfig.from_preset("tiny", stepz=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SLIDE_ENCODER_PRESETS.get("tiny").dim = 3
    enc = SlideEncoder.from_preset("tiny", input_dim=8)
    before = enc.config
    assert enc.set_attention_backend("dense") is enc and enc.config.attention_backend == "dense"
    assert before.attention_backend == "auto"  # the old config object is untouched
    with pytest.raises(KeyError, match="unknown attention backend"):
        enc.set_attention_backend("nope")
    with pytest.raises(ValueError, match=r"unknown slide-encoder setting\(s\) \['dimm'\]"):
        before.replace(dimm=3)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['embed_dimm'\]"):
        PathAlignConfig.from_preset("tiny", ["rna", "snp"], {"rna": 3, "snp": 3}, embed_dimm=4)


# ------------------------------------------------------------------------------------ registries
def test_every_model_preset_slide_preset_and_molecular_encoder_builds():
    from pathalign.models import MODEL_PRESETS, MOLECULAR_ENCODERS, SLIDE_ENCODER_PRESETS, SlideEncoder
    from pathalign.models.rna_fm import RNAFMConfig

    for name in SLIDE_ENCODER_PRESETS:
        enc = SlideEncoder.from_preset(name, input_dim=8)
        assert enc.config.output_dim == 8 + SLIDE_ENCODER_PRESETS.get(name).dim, name
    for name in MODEL_PRESETS:
        preset = MODEL_PRESETS.get(name)
        cfg = PathAlignConfig.from_preset(name, ["wsi", "rna"], {"wsi": 8, "rna": 6})
        assert cfg.slide_encoder_config().dim == SLIDE_ENCODER_PRESETS.get(preset.slide_encoder).dim, name
        assert cfg.embed_dim == preset.embed_dim and cfg.proj_dim == preset.proj_dim, name
    fm = {"n_genes": 6, "dim": 8, "depth": 1}
    options = {"frozen_fm": {"fm_config": fm}}
    for name in MOLECULAR_ENCODERS:
        enc = MOLECULAR_ENCODERS.get(name).build(7, 16, 1, 0.0, **options.get(name, {}))
        assert enc(torch.randn(2, 7)).shape == (2, 16), name
    model = PathAlignModel(PathAlignConfig(["rna", "snp"], {"rna": 7, "snp": 3}, embed_dim=16,
                                           rna_encoder="frozen_fm", rna_fm=fm))
    assert type(model.encoders["rna"]) is MOLECULAR_ENCODERS.get("frozen_fm")
    assert RNAFMConfig(**fm) == model.encoders["rna"].foundation.config
    with pytest.raises(KeyError, match="unknown molecular encoder 'transformer'"):
        PathAlignConfig(["rna", "snp"], {"rna": 7, "snp": 3}, rna_encoder="transformer")


def test_one_modality_list_everywhere():
    import pathalign.cohort as cohort
    import pathalign.evaluate.ablate as ablate
    import pathalign.models.pathalign_model as pm
    from pathalign import modalities

    assert cohort.MOLECULAR is modalities.MOLECULAR and cohort.MODALITIES is modalities.MODALITIES
    assert ablate.MOLECULAR is modalities.MOLECULAR and pm.MOLECULAR is modalities.MOLECULAR
    with pytest.raises(ValueError, match=r"unknown modalities \['proteomics'\]"):
        PathAlignConfig(["rna", "proteomics"], {"rna": 3, "proteomics": 3})


# ------------------------------------------------------------------------------------ public API
def test_create_model_list_models_and_preprocess(tmp_path):
    import numpy as np
    import pandas as pd

    import pathalign

    assert pathalign.list_models() == ["exaone-path-2.5", "molecular", "small", "tiny"]
    m = pathalign.create_model("tiny", modalities=["wsi", "rna"], input_dims={"wsi": 10, "rna": 4})
    assert m.slide_encoder.config.input_dim == 10 and m.output_dim("rna") == 64
    with pytest.raises(ValueError, match="give modalities and input_dims"):
        pathalign.create_model("tiny")
    with pytest.raises(KeyError, match="neither a model preset"):
        pathalign.create_model("huge")
    model = _trained_like(seed=4)
    model.save_pretrained(tmp_path / "m")
    again = pathalign.create_model(str(tmp_path / "m"))
    assert again.config.to_dict() == model.config.to_dict()
    # the molecular transform travels with the model: log2(TPM+1), standardised with the training statistics
    rng = np.random.default_rng(9)
    genes = model.preprocessing["rna"]["features"]
    table = pd.DataFrame(rng.gamma(2.0, 20.0, (3, len(genes))), columns=genes[::-1])[genes[::-1]]
    x = again.preprocess("rna", table)
    st = model.preprocessing["rna"]
    ref = (np.log2(table[genes].to_numpy() + 1) - np.asarray(st["center"])) / np.asarray(st["scale"])
    assert x.dtype == torch.float32 and np.allclose(x.numpy(), ref, atol=1e-5), "seed 9"
    assert again.encode_molecular("rna", x).shape == (3, 64)
    with pytest.raises(KeyError, match="no preprocessing for 'cnv'"):
        again.preprocess("cnv", table)


def test_encode_aliases_warn_at_the_caller_and_equal_encode_molecular():
    import pathalign.models.pathalign_model as pm

    mods = ["rna", "snp", "cnv", "methylation"]
    dims = {"rna": 9, "snp": 5, "cnv": 7, "methylation": 6}
    torch.manual_seed(0)
    model = PathAlignModel(PathAlignConfig(mods, dims, embed_dim=16, proj_dim=8)).eval()
    for m in mods:
        x = torch.randn(3, dims[m])
        message = rf"encode_{m}\(x\) is deprecated.*encode_molecular\('{m}', x\)"
        with pytest.warns(DeprecationWarning, match=message) as rec:
            got = getattr(model, f"encode_{m}")(x)
        assert rec[0].filename == __file__  # the warning names the caller's line, not pathalign's
        assert torch.equal(got, model.encode_molecular(m, x))
    for removed in ("extra", "preset_names"):
        assert not hasattr(model, removed) and not hasattr(pm, removed)


def test_slide_encoder_forward_and_gradients_follow_the_caller():
    from pathalign.models import SlideEncoder

    seed = 11
    g = torch.Generator().manual_seed(seed)
    enc = SlideEncoder.from_preset("tiny", input_dim=8).eval()
    slides = [(torch.randn(n, 8, generator=g), torch.randint(0, 3000, (n, 2), generator=g), None) for n in (5, 9)]
    out = enc(slides)  # calling the module works like every nn.Module
    ref = torch.stack([o["slide_embedding"] for o in enc.encode_batch(slides)])
    assert out.shape == (2, enc.config.output_dim) and torch.allclose(out, ref, atol=1e-6), f"seed {seed}"
    assert out.requires_grad  # eval mode does not switch gradients off behind the caller's back
    out.sum().backward()
    assert enc.patch_embed.proj.weight.grad is not None
    with torch.inference_mode():
        assert not enc.encode(*slides[0])["slide_embedding"].requires_grad


def test_patch_encoder_mismatch_is_refused():
    from pathalign.io.model_folder import ConfigError

    model = _trained_like()
    model.check_patch_encoder("builtin", "feats/")
    model.check_patch_encoder(None, "feats/")  # not recorded in the files: nothing to compare
    with pytest.raises(ConfigError, match=r"feats/: patch features from encoder 'uni', but this model was "
                                          r"trained on 'builtin' features; extract them with 'pathalign "
                                          r"preprocess --encoder builtin'"):
        model.check_patch_encoder("uni", "feats/")


# ------------------------------------------------------------------------------------ Hugging Face Hub
def _fake_hub_cache(cache, repo: str, folder) -> str:
    """A Hugging Face cache holding ``folder`` as the main snapshot of ``repo`` (the cache's own layout)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return commit


def test_load_model_from_hub_id_through_an_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    from pathalign.io.model_folder import ConfigError

    model = _trained_like(seed=5)
    model.save_pretrained(tmp_path / "m")
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "my-lab/pathalign-tiny", tmp_path / "m")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))  # the library reads both once, at import
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    loaded = load_model("hf-hub:my-lab/pathalign-tiny")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(ConfigError, match="hf-hub:my-lab/missing: cannot resolve .* HF_HUB_OFFLINE=1"):
        load_model("hf-hub:my-lab/missing")


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            calls["upload"] = (repo_id, files, commit_message)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = _trained_like().push_to_hub("my-lab/tiny", token="hf_x", private=True, metrics={"auc": 0.75})
    assert url == "https://huggingface.co/my-lab/tiny"
    assert calls["create"] == ("my-lab/tiny", True, True) and calls["token"] == "hf_x"
    repo, files, _ = calls["upload"]
    assert set(files) == {"model.safetensors", "config.json", "README.md"}
    assert json.loads(files["config.json"])["training"]["metrics"] == {"auc": 0.75}
    assert b"# tiny" in files["README.md"]


def _ddp_worker(rank: int, world: int, init_file: str, out_path: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    init_gloo(rank, world, init_file)
    torch.manual_seed(0)
    model = PathAlignModel(PathAlignConfig(["rna", "snp", "cnv"], {"rna": 6, "snp": 4, "cnv": 5}, embed_dim=8,
                                           proj_dim=4, dropout=0.0))
    net = DDP(model, find_unused_parameters=True)  # as the trainer wraps it
    loss_fn = MultimodalSigLIPLoss(rank=rank, world_size=world)
    for step in range(3):  # a second backward is where DDP notices a parameter marked ready twice
        g = torch.Generator().manual_seed(10 * step + rank)
        batch = {"valid": {m: torch.ones(4, dtype=torch.bool) for m in ("rna", "snp", "cnv")},
                 "rna": torch.randn(4, 6, generator=g), "snp": torch.randn(4, 4, generator=g),
                 "cnv": torch.randn(4, 5, generator=g)}
        if step == 2:
            batch["valid"]["cnv"][:] = False  # a modality absent from the whole global batch
        model.zero_grad()
        loss_fn(net(batch)).loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save(grads, f"{out_path}.{rank}.{step}")
    close_gloo()


@pytest.mark.slow
def test_model_output_through_ddp_trains_with_the_separate_loss(tmp_path):
    """The pair heads' outputs (t, b included) reach the loss outside DDP's forward without breaking its reducer:
    every rank ends each step with the same (all-reduced) gradients, the pair heads' t and b among them."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path / "g")), nprocs=2, join=True)
    for step in range(3):
        g0, g1 = (torch.load(tmp_path / f"g.{r}.{step}", weights_only=True) for r in (0, 1))
        scale = [k for k in g0 if k.startswith(("pair_heads.log_t.", "pair_heads.bias."))]
        assert set(g0) == set(g1) and scale, sorted(g0)
        # the pairs with CNV get no gradient at step 2 (no patient has CNV), every other one does
        absent = {k for k in scale if step == 2 and "cnv" in k}
        assert scale and all((g0[k] != 0) == (k not in absent) for k in scale), (step, {k: g0[k] for k in scale})
        for k in g0:
            torch.testing.assert_close(g0[k], g1[k], msg=f"step {step}: {k} differs between ranks")
