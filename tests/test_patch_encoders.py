"""Every patch-encoder entry against its publisher: output dim, weights in the publisher's own
checkpoint layout, and features equal to an independent construction of the publisher's
architecture on real H&E patches (fp32 CPU, relative error < 1e-4).

The references are written here from the publishers' code and model cards (see
docs/patch_encoders.md): timm.create_model with the publisher's own kwargs (UNI, UNI2-h, Virchow2,
H-optimus-0, Prov-GigaPath), a hand-written DINO (v1) ViT-B/14 for EXAONE Path 2.5 (full size),
CONCH v1.5's 224-px trunk + DINO position interpolation + attentional pooler, and a transformers-
layout Dinov2 forward for Phikon-v2. ViT-L/H/g references use 1-2 blocks (the loader reads the
depth off the weights).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conftest import DATA, needs_cuda, rel_err
from pathalign.slides.patch_encoders import (
    PATCH_ENCODERS,
    PatchEncoderError,
    build_patch_encoder,
    get_spec,
    make_transform,
)

SLIDE = DATA / "cmu_small_region.svs"
TISSUE = [(1120, 672), (896, 1568)]  # level-0 (x, y) of tissue-rich windows of the real H&E region
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
SEED = 1234


def patches(size: int) -> torch.Tensor:
    """uint8 [B, size, size, 3] real H&E patches."""
    openslide = pytest.importorskip("openslide")
    if not SLIDE.exists():
        pytest.skip(f"real slide not found: {SLIDE}")
    s = openslide.OpenSlide(str(SLIDE))
    out = [np.asarray(s.read_region(xy, 0, (size, size)).convert("RGB")) for xy in TISSUE]
    return torch.from_numpy(np.stack(out).copy())


def normalise(x: torch.Tensor, mean_std) -> torch.Tensor:
    """uint8 [B,H,W,3] at the model's size → normalised float [B,3,H,W] (ToTensor + Normalize)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    return (x.permute(0, 3, 1, 2).float() / 255 - mean) / std


def randomize(module: nn.Module, seed: int = SEED) -> nn.Module:
    """Every parameter random (norm weights / layer scales around 1), so no block is a near no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_scale = p.ndim == 1 and any(t in name for t in ("norm", "gamma", "lambda", "ln_")) and "bias" not in name
            p.copy_(1 + 0.1 * noise if is_scale else 0.05 * noise)
    return module.eval()


# ----------------------------------------------------------------------------- dims
@pytest.mark.parametrize("name", PATCH_ENCODERS.names())
def test_random_build_gives_registered_dim(name):
    kw = {} if name == "pathalign-stats" else {"depth": 1}
    enc = build_patch_encoder(name, pretrained=False, **kw)
    x = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        out = enc.model(enc.transform(x))
    assert out.shape == (2, get_spec(name).dim) == (2, enc.dim), name


# ----------------------------------------------------------------------------- timm-published entries
def _swiglu():
    import timm

    return dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)


# name -> (timm arch, the publisher's kwargs (model card / TRIDENT), readout, normalisation, weight file)
TIMM_REFERENCES = {
    "uni": ("vit_large_patch16_224", lambda: dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                                                  dynamic_img_size=True), "head", IMAGENET, "pytorch_model.bin"),
    "uni2-h": ("vit_giant_patch14_224", lambda: dict(img_size=224, patch_size=14, depth=24, num_heads=24,
                                                     init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2,
                                                     num_classes=0, no_embed_class=True, reg_tokens=8,
                                                     dynamic_img_size=True, **_swiglu()),
               "head", IMAGENET, "pytorch_model.bin"),
    "virchow2": ("vit_huge_patch14_224", lambda: dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4,
                                                      mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
                                                      **_swiglu()), "virchow", IMAGENET, "model.safetensors"),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", lambda: dict(num_classes=0, img_size=224, global_pool="token",
                                                                  init_values=1e-5, dynamic_img_size=True),
                    "head", HOPTIMUS, "pytorch_model.bin"),
    "prov-gigapath": ("vit_giant_patch14_dinov2", lambda: dict(img_size=224, in_chans=3, patch_size=16,
                                                               embed_dim=1536, depth=40, num_heads=24,
                                                               mlp_ratio=5.33334, num_classes=0,
                                                               dynamic_img_size=True),
                      "head", IMAGENET, "pytorch_model.bin"),
}


def _save(sd: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("name", sorted(TIMM_REFERENCES))
def test_timm_entries_match_publisher_construction(name, tmp_path):
    import timm

    arch, kwargs, readout, norm, fname = TIMM_REFERENCES[name]
    depth = 2 if name == "uni" else 1  # ViT-H/g: one block keeps the saved checkpoint small
    ref = randomize(timm.create_model(arch, pretrained=False, **{**kwargs(), "depth": depth, "weight_init": "skip"}))
    _save(ref.state_dict(), tmp_path / "snapshot" / fname)  # the Hub snapshot folder layout
    enc = build_patch_encoder(name, weights=tmp_path / "snapshot")
    assert len(enc.model.trunk.blocks) == depth  # read off the weights
    pre = enc.preprocess
    x = patches(pre.resize)  # at the resize size: Resize is the identity, CenterCrop cuts the model's input
    off = (pre.resize - 224) // 2
    with torch.no_grad():
        inp = normalise(x[:, off:off + 224, off:off + 224], norm)
        if readout == "virchow":  # model card: concat(CLS, mean of the patch tokens after 1 CLS + 4 registers)
            tokens = ref(inp)
            want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
        else:
            want = ref(inp)
        got = enc.model(enc.transform(x))
    assert got.shape == want.shape == (len(TISSUE), enc.dim)
    assert rel_err(got, want) < 1e-4, f"{name}: seed {SEED}, rel err {rel_err(got, want):.2e}"


# ----------------------------------------------------------------------------- EXAONE Path 2.5 (DINO v1 ViT-B/14)
class DinoViT(nn.Module):
    """The EXAONE Path 2.5 patch encoder as its reference code defines it (vit_base, patch 14, 224 px):
    learned 257-token position embedding, qkv bias, GELU MLP, LayerNorm eps 1e-6, no layer scale,
    output = normed CLS. Written out here, independent of timm."""

    def __init__(self, dim=768, depth=12, heads=12, patch=14, img=224):
        super().__init__()
        self.heads = heads
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.norm1, b.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            b.attn = nn.Module()
            b.attn.qkv, b.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            b.mlp = nn.Module()
            b.mlp.fc1, b.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for b in self.blocks:
            bsz, n, c = x.shape
            q, k, v = b.attn.qkv(b.norm1(x)).reshape(bsz, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
            x = x + b.attn.proj((a @ v).transpose(1, 2).reshape(bsz, n, c))
            x = x + b.mlp.fc2(F.gelu(b.mlp.fc1(b.norm2(x))))
        return self.norm(x)[:, 0]


@pytest.fixture(scope="module")
def exaone_reference():
    torch.manual_seed(SEED)
    return randomize(DinoViT())


def _exaone_repo(root: Path, ref: nn.Module) -> Path:
    """The Hub export: patch-encoder/model.safetensors with ``patch_encoder.backbone.*`` keys."""
    _save({"patch_encoder.backbone." + k: v for k, v in ref.state_dict().items()},
          root / "patch-encoder" / "model.safetensors")
    (root / "patch-encoder" / "config.json").write_text('{"model_type": "exaonepath_patch_encoder"}')
    return root


def test_exaone_path_25_full_size_matches_reference(exaone_reference, tmp_path):
    repo = _exaone_repo(tmp_path / "EXAONE-Path-2.5", exaone_reference)
    x = patches(224)
    enc = build_patch_encoder("exaone-path-2.5", weights=repo)  # the repository root: finds patch-encoder/
    assert len(enc.model.trunk.blocks) == 12 and enc.precision == torch.bfloat16  # publisher: bf16 autocast
    with torch.no_grad():
        want = exaone_reference(normalise(x, IMAGENET))
        got = enc.model(enc.transform(x))
    assert rel_err(got, want) < 1e-4, f"seed {SEED}, rel err {rel_err(got, want):.2e}"
    # the subfolder, the file inside it, and a plain state dict load the same tensors
    loaded = enc.model.state_dict()
    sd = {"patch_encoder.backbone." + k: v for k, v in exaone_reference.state_dict().items()}
    for weights in (repo / "patch-encoder", repo / "patch-encoder" / "model.safetensors", sd):
        other = build_patch_encoder("exaone-path-2.5", weights=weights).model.state_dict()
        assert other.keys() == loaded.keys() and all(torch.equal(other[k], loaded[k]) for k in loaded), weights


def test_exaone_refuses_weights_of_another_layout(exaone_reference):
    sd = {"patch_encoder.backbone." + k: v for k, v in exaone_reference.state_dict().items()}
    sd["patch_encoder.backbone.blocks.0.ls1.gamma"] = torch.ones(768)  # a DINOv2 layer scale: not this model
    del sd["patch_encoder.backbone.norm.weight"]
    with pytest.raises(PatchEncoderError, match=r"missing 1 keys \['trunk.norm.weight'\].*unexpected 1 keys "
                                                r"\['trunk.blocks.0.ls1.gamma'\]"):
        build_patch_encoder("exaone-path-2.5", weights=sd)


# ----------------------------------------------------------------------------- CONCH v1.5
def _conch_reference_forward(sd: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    """TRIDENT's CONCHVisionTower: trunk built at 224 px (checkpoint position embedding resized to 14x14,
    bilinear), DINO-interpolated to the 448-px grid at forward time, attentional pooler, LayerNorm."""
    import timm
    from timm.layers import resample_abs_pos_embed

    trunk = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1.0, depth=depth)
    tsd = {k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")}
    tsd["pos_embed"] = resample_abs_pos_embed(tsd["pos_embed"], new_size=(14, 14), num_prefix_tokens=1,
                                              interpolation="bilinear", antialias=False, verbose=False)
    trunk.load_state_dict(tsd)
    trunk.eval()
    b, _, w, h = x.shape
    t = trunk.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [B, 28*28, 1024] (no 224-px size check)
    t = torch.cat([trunk.cls_token.expand(b, -1, -1), t], 1)
    n = trunk.pos_embed.shape[1] - 1
    w0, h0 = w // 16 + 0.1, h // 16 + 0.1
    grid = F.interpolate(trunk.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2),
                         scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    pos = torch.cat([trunk.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[1])], 1)
    t = trunk.norm(trunk.blocks(t + pos))
    # AttentionalPooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)
    p = "attn_pool_contrast."
    kx = F.layer_norm(t, (1024,), sd[p + "ln_k.weight"], sd[p + "ln_k.bias"])
    q = F.layer_norm(sd[p + "query"], (768,), sd[p + "ln_q.weight"], sd[p + "ln_q.bias"]) @ sd[p + "to_q.weight"].T
    k, v = (kx @ sd[p + "to_kv.weight"].T).chunk(2, -1)
    q = q.reshape(1, 8, 96).transpose(0, 1)  # [h, 1, 96]
    k, v = (z.reshape(b, -1, 8, 96).permute(0, 2, 1, 3) for z in (k, v))  # [B, h, N, 96]
    sim = torch.einsum("hid,bhjd->bhij", q * 96 ** -0.5, k)
    out = torch.einsum("bhij,bhjd->bhid", (sim - sim.amax(-1, keepdim=True)).softmax(-1), v)
    out = out.permute(0, 2, 1, 3).reshape(b, 1, 768) @ sd[p + "to_out.weight"].T
    return F.layer_norm(out[:, 0], (768,), sd["ln_contrast.weight"], sd["ln_contrast.bias"])


def test_conch_v15_matches_reference(tmp_path, ckpt_grid=28):
    g = torch.Generator().manual_seed(SEED + ckpt_grid)
    model = build_patch_encoder("conch-v1.5", pretrained=False, depth=2).model
    sd = {k: v for k, v in randomize(model, SEED + ckpt_grid).state_dict().items()}
    sd["trunk.pos_embed"] = 0.05 * torch.randn(1, 1 + ckpt_grid ** 2, 1024, generator=g)  # the published grid
    _save(sd, tmp_path / "conchv1_5" / "pytorch_model_vision.bin")
    enc = build_patch_encoder("conch-v1.5", weights=tmp_path / "conchv1_5")
    x = patches(448)
    with torch.no_grad():
        want = _conch_reference_forward(sd, normalise(x, IMAGENET), depth=2)
        got = enc.model(enc.transform(x))
    assert got.shape == (len(TISSUE), 768)
    assert rel_err(got, want) < 1e-4, f"seed {SEED + ckpt_grid}: rel err {rel_err(got, want):.2e}"


# ----------------------------------------------------------------------------- Phikon-v2 (transformers Dinov2Model)
def _dinov2_state(depth=2, dim=1024, seed=SEED) -> dict:
    """Random weights under transformers' Dinov2Model key names (Phikon-v2: ViT-L/16, 224 px)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.05 * torch.randn(*s, generator=g)  # noqa: E731
    one = lambda n: 1 + 0.1 * torch.randn(n, generator=g)  # noqa: E731
    sd = {"embeddings.cls_token": r(1, 1, dim), "embeddings.mask_token": r(1, dim),
          "embeddings.position_embeddings": r(1, 197, dim),
          "embeddings.patch_embeddings.projection.weight": r(dim, 3, 16, 16),
          "embeddings.patch_embeddings.projection.bias": r(dim),
          "layernorm.weight": one(dim), "layernorm.bias": r(dim)}
    for i in range(depth):
        p = f"encoder.layer.{i}."
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = one(dim), r(dim)
        for n in ("query", "key", "value"):
            sd[p + f"attention.attention.{n}.weight"], sd[p + f"attention.attention.{n}.bias"] = r(dim, dim), r(dim)
        sd[p + "attention.output.dense.weight"], sd[p + "attention.output.dense.bias"] = r(dim, dim), r(dim)
        sd[p + "layer_scale1.lambda1"], sd[p + "layer_scale2.lambda1"] = one(dim), one(dim)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = r(4 * dim, dim), r(4 * dim)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = r(dim, 4 * dim), r(dim)
    return sd


def _dinov2_forward(sd: dict, x: torch.Tensor, depth=2, heads=16) -> torch.Tensor:
    """Dinov2Model(...).last_hidden_state[:, 0], as transformers' modeling_dinov2 computes it."""
    e = F.conv2d(x, sd["embeddings.patch_embeddings.projection.weight"],
                 sd["embeddings.patch_embeddings.projection.bias"], stride=16).flatten(2).transpose(1, 2)
    h = torch.cat([sd["embeddings.cls_token"].expand(len(x), -1, -1), e], 1) + sd["embeddings.position_embeddings"]
    b, n, d = h.shape
    ln = lambda t, p: F.layer_norm(t, (d,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    lin = lambda t, p: t @ sd[p + ".weight"].T + sd[p + ".bias"]  # noqa: E731
    for i in range(depth):
        p = f"encoder.layer.{i}."
        y = ln(h, p + "norm1")
        q, k, v = (lin(y, p + f"attention.attention.{z}").reshape(b, n, heads, -1).transpose(1, 2)
                   for z in ("query", "key", "value"))
        a = (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
        h = h + sd[p + "layer_scale1.lambda1"] * lin((a @ v).transpose(1, 2).reshape(b, n, d), p + "attention.output.dense")
        h = h + sd[p + "layer_scale2.lambda1"] * lin(F.gelu(lin(ln(h, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
    return ln(h, "layernorm")[:, 0]


def test_phikon_v2_dinov2_layout_matches_reference(tmp_path):
    sd = _dinov2_state()
    _save(sd, tmp_path / "phikon-v2" / "model.safetensors")
    enc = build_patch_encoder("phikon-v2", weights=tmp_path / "phikon-v2")
    x = patches(224)
    with torch.no_grad():
        want = _dinov2_forward(sd, normalise(x, IMAGENET))
        got = enc.model(enc.transform(x))
    assert rel_err(got, want) < 1e-4, f"seed {SEED}: rel err {rel_err(got, want):.2e}"
    del sd["encoder.layer.1.attention.attention.value.bias"]
    with pytest.raises(PatchEncoderError, match="value"):
        build_patch_encoder("phikon-v2", weights=sd)


# ----------------------------------------------------------------------------- transforms and refusals
def test_transforms_match_publisher_torchvision_pipelines():
    """Each entry's transform against the publisher's PIL pipeline (Resize → CenterCrop → ToTensor →
    Normalize): identical at the model's input size; after a resize within two grey levels (PIL and
    torch round their 8-bit resampling kernels differently)."""
    from PIL import Image
    from torchvision import transforms as T

    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    x = patches(256)
    for name in PATCH_ENCODERS.names():
        pre = get_spec(name).preprocess
        if pre.mean is None:
            continue
        steps = [T.Resize(pre.resize, interpolation=modes[pre.interpolation])]
        steps += [T.CenterCrop(pre.crop)] if pre.crop else []
        ref_t = T.Compose(steps + [T.ToTensor(), T.Normalize(pre.mean, pre.std)])
        ours = make_transform(pre)
        side = pre.crop or pre.resize
        native = x[:, :side, :side] if side <= 256 else patches(side)
        for batch, tol in ((x, 2.0 / 255 / min(pre.std) + 1e-5), (native, 1e-5)):
            want = torch.stack([ref_t(Image.fromarray(p.numpy())) for p in batch])
            got = ours(batch)
            assert got.shape == want.shape, name
            assert (got - want).abs().max() <= tol, f"{name}: max diff {(got - want).abs().max():.2e}"


def test_wrong_encoder_weights_are_refused_with_key_names(tmp_path):
    import timm

    uni = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, depth=1)
    _save(uni.state_dict(), tmp_path / "uni" / "pytorch_model.bin")
    with pytest.raises(PatchEncoderError, match=r"virchow2.*(missing|unexpected).*reg_token|size mismatch"):
        build_patch_encoder("virchow2", weights=tmp_path / "uni")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchEncoderError, match="no pytorch_model_vision.bin"):
        build_patch_encoder("conch-v1.5", weights=tmp_path / "empty")


# ----------------------------------------------------------------------------- GPU (gated)
@needs_cuda()
def test_cuda_extraction_in_the_entrys_precision_is_close_to_cpu_fp32(exaone_reference):
    """What extract does on a GPU: the transform on the device, autocast in the entry's precision."""
    sd = {"patch_encoder.backbone." + k: v for k, v in exaone_reference.state_dict().items()}
    cpu = build_patch_encoder("exaone-path-2.5", weights=sd)
    gpu = build_patch_encoder("exaone-path-2.5", weights=sd, device="cuda")
    x = patches(256)  # Resize 256 -> 224 on the GPU too
    with torch.no_grad():
        want = cpu.model(cpu.transform(x))
        with torch.autocast("cuda", dtype=gpu.precision):
            got = gpu.model(gpu.transform(x.cuda())).float().cpu()
    assert rel_err(got, want) < 3e-2, f"seed {SEED}: rel err {rel_err(got, want):.2e} in {gpu.precision}"
