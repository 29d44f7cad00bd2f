"""F-RoPE slide encoder: parity with the published model, invariances, backends, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import REFERENCE, needs_cuda, rel_err
from helpers import random_slide, seeded_rng
from pathalign import SlideEncoder, SlideEncoderConfig, SlideInputError
from pathalign.io.checkpoints import CheckpointError

REF_FILE = REFERENCE / "ep25_small.safetensors"


@pytest.fixture(scope="module")
def reference():
    return load_file(str(REF_FILE))


def _weights(ref):
    return {k: v for k, v in ref.items() if k.startswith("weights.")}


def _slides(ref):
    mask = ref["input.mask"].bool()
    for b in range(mask.shape[0]):
        m = mask[b]
        yield b, ref["input.features"][b][m], ref["input.coords"][b][m], ref["input.fragment"][b][m]


# ---------------------------------------------------------------- parity with the published code
def test_parity_with_published_outputs(reference):
    enc = SlideEncoder.from_exaone_path(_weights(reference))
    c = reference["input.features"].shape[-1]
    assert not enc.training
    assert (enc.config.input_dim, enc.config.dim, enc.config.depth, enc.config.num_heads, enc.config.n_registers) == (48, 64, 4, 4, 7)
    for b, feats, coords, frag in _slides(reference):
        out = enc.encode(feats, coords, frag)
        assert rel_err(out["slide_embedding"], reference["output.slide_embedding"][b]) < 1e-5
        real = reference["input.mask"][b].bool()
        assert rel_err(out["patch_tokens"], reference["output.patch_embedding"][b][real][:, c:]) < 1e-5
        out_nf = enc.encode(feats, coords, None)
        assert rel_err(out_nf["slide_embedding"], reference["output.slide_embedding_no_fragments"][b]) < 1e-5
        # the two references differ, so a fragment mask that did nothing would fail above
        assert rel_err(out_nf["slide_embedding"], reference["output.slide_embedding"][b]) > 1e-4


def test_parity_batch_and_every_backend(reference):
    enc = SlideEncoder.from_exaone_path(_weights(reference))
    slides = [(f, xy, fr) for _, f, xy, fr in _slides(reference)]
    for backend in ("dense", "segment", "nested"):
        enc.set_attention_backend(backend)
        outs = enc.encode_batch(slides)
        for b, out in enumerate(outs):
            assert rel_err(out["slide_embedding"], reference["output.slide_embedding"][b]) < 1e-5, backend


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "pt"])
def test_from_exaone_path_files_and_prefixes(reference, tmp_path, fmt):
    sd = {"model.slide_encoder." + k[len("weights."):]: v.clone() for k, v in _weights(reference).items()}
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd} if fmt == "pt" else sd, str(path))
    enc = SlideEncoder.from_exaone_path(path)
    b, feats, coords, frag = next(_slides(reference))
    assert rel_err(enc.encode(feats, coords, frag)["slide_embedding"], reference["output.slide_embedding"][b]) < 1e-5


def test_from_exaone_path_full_size_layout():
    """The architecture of the published full-size checkpoint is read off its key shapes."""
    import json

    shapes = json.loads((REFERENCE / "ep25_full_keys.json").read_text())["state_dict_shapes"]
    sd = {k: torch.zeros(v) for k, v in shapes.items()}
    sd["transformer.rope_embed.periods"] = torch.tensor([100 ** (k / 16) for k in range(16)])
    enc = SlideEncoder.from_exaone_path(sd)
    cfg = enc.config
    assert (cfg.input_dim, cfg.dim, cfg.depth, cfg.num_heads, cfg.n_registers, cfg.hidden_dim) == (768, 768, 6, 12, 7, 2048)
    assert cfg == SlideEncoder.from_preset("exaone-path-2.5").config.replace(mlp_hidden=2048, rope_base=cfg.rope_base)
    assert abs(cfg.rope_base - 100.0) < 1e-3


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        SlideEncoder.from_exaone_path(bad)
    with pytest.raises(CheckpointError, match="transformer"):
        SlideEncoder.from_exaone_path({"foo.weight": torch.zeros(2)})


# ---------------------------------------------------------------- invariances on random weights
def _random_encoder(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = SlideEncoderConfig(input_dim=24, dim=32, depth=4, num_heads=2, n_registers=3, **kw)
    enc = SlideEncoder(cfg).eval()
    with torch.no_grad():  # non-trivial norms and tokens so that every path matters
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc


def test_translating_each_fragment_leaves_slide_embedding_unchanged():
    rng = seeded_rng()
    enc = _random_encoder(int(rng.integers(1 << 30)))
    feats, coords, frag = random_slide(rng, 150, 24, 5)
    ref = enc.encode(feats, coords, frag)["slide_embedding"]
    shifted = coords.clone()
    for f in frag.unique():
        shift = torch.from_numpy(rng.integers(-20, 200, size=2)) * 256
        shifted[frag == f] += shift
    out = enc.encode(feats, shifted, frag)["slide_embedding"]
    assert rel_err(out, ref) < 1e-4
    # moving one patch relative to its fragment does change it: positions matter
    moved = coords.clone()
    moved[0] += 256 * 7
    assert rel_err(enc.encode(feats, moved, frag)["slide_embedding"], ref) > 1e-6


def test_permuting_tokens_permutes_patch_tokens():
    rng = seeded_rng()
    enc = _random_encoder(int(rng.integers(1 << 30)))
    feats, coords, frag = random_slide(rng, 120, 24, 4)
    ref = enc.encode(feats, coords, frag)
    perm = torch.from_numpy(rng.permutation(120))
    out = enc.encode(feats[perm], coords[perm], frag[perm])
    assert rel_err(out["slide_embedding"], ref["slide_embedding"]) < 1e-5
    assert rel_err(out["patch_tokens"], ref["patch_tokens"][perm]) < 1e-5


def test_encode_batch_equals_encode_slide_by_slide():
    rng = seeded_rng()
    enc = _random_encoder(int(rng.integers(1 << 30)))
    slides = [random_slide(rng, int(n), 24, int(f)) for n, f in [(90, 3), (1, 1), (40, 40), (70, 2)]]
    slides.append((slides[0][0], slides[0][1], None))
    batch = enc.encode_batch(slides)
    for (f, xy, fr), out in zip(slides, batch):
        one = enc.encode(f, xy, fr)
        assert rel_err(out["slide_embedding"], one["slide_embedding"]) < 1e-5
        assert rel_err(out["patch_tokens"], one["patch_tokens"]) < 1e-5


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", ["segment", "nested", "dense"])
def test_backends_match_dense_reference_fp32(backend):
    rng = seeded_rng()
    enc = _random_encoder(int(rng.integers(1 << 30)))
    # fragments of one token and slides of one token included
    slides = [random_slide(rng, 60, 24, 60), random_slide(rng, 1, 24, 1), random_slide(rng, 130, 24, 7),
              random_slide(rng, 33, 24, 1)]
    singles = random_slide(rng, 50, 24, 5)
    slides.append((singles[0], singles[1], torch.where(torch.arange(50) < 3, torch.arange(50) + 1000, singles[2])))
    enc.set_attention_backend("dense")
    ref = enc.encode_batch(slides)
    enc.set_attention_backend(backend)
    out = enc.encode_batch(slides)
    for a, b in zip(out, ref):
        assert rel_err(a["slide_embedding"], b["slide_embedding"]) < 1e-5
        assert rel_err(a["patch_tokens"], b["patch_tokens"]) < 1e-5


@pytest.mark.parametrize("backend", ["segment", "nested"])
def test_backends_match_dense_reference_bf16(backend):
    rng = seeded_rng()
    enc = _random_encoder(int(rng.integers(1 << 30)))
    slides = [random_slide(rng, 80, 24, 6), random_slide(rng, 1, 24, 1), random_slide(rng, 45, 24, 45)]
    enc.set_attention_backend("dense")
    ref = enc.encode_batch(slides)
    enc.set_attention_backend(backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc.encode_batch(slides)
    for a, b in zip(out, ref):
        assert rel_err(a["slide_embedding"].float(), b["slide_embedding"]) < 1e-2
        assert rel_err(a["patch_tokens"].float(), b["patch_tokens"]) < 1e-2


def test_segment_backend_gradients_match_dense():
    rng = seeded_rng()
    slides = [random_slide(rng, 64, 24, 4), random_slide(rng, 20, 24, 20)]
    grads = {}
    for backend in ("dense", "segment"):
        enc = _random_encoder(3, attention_backend=backend).train()
        loss = sum((o["slide_embedding"] ** 2).sum() for o in enc.encode_batch(slides))
        loss.backward()
        grads[backend] = torch.cat([p.grad.flatten() for p in enc.parameters()])
    assert rel_err(grads["segment"], grads["dense"]) < 1e-5


def test_default_path_allocates_nothing_of_size_t_by_t():
    rng = np.random.default_rng(0)
    enc = _random_encoder(0)
    slides = [random_slide(rng, 400, 24, 8), random_slide(rng, 300, 24, 6)]
    t = 700 + 2 * enc.config.n_prefix
    for backend, expect_big in (("auto", False), ("dense", True)):
        enc.set_attention_backend(backend)
        with _LargestTensor() as probe:
            enc.encode_batch(slides)
        assert (probe.largest >= t * t) == expect_big, (backend, probe.largest, t * t)


@needs_cuda()
@pytest.mark.parametrize("backend", ["segment", "nested", "varlen", "flex"])
def test_cuda_backends_match_dense(backend):
    rng = seeded_rng()
    enc = _random_encoder(1).cuda()
    slides = [random_slide(rng, 300, 24, 6), random_slide(rng, 1, 24, 1), random_slide(rng, 64, 24, 64)]
    enc.set_attention_backend("dense")
    ref = enc.encode_batch(slides)
    enc.set_attention_backend(backend)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = enc.encode_batch(slides)
    for a, b in zip(out, ref):
        assert rel_err(a["slide_embedding"].float().cpu(), b["slide_embedding"].cpu()) < 1e-2


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda f, xy, fr: (f, xy[:-1], fr), "coords"),
        (lambda f, xy, fr: (f, xy, fr[:-1]), "fragment"),
        (lambda f, xy, fr: (f.index_fill(0, torch.tensor([3]), float("nan")), xy, fr), "NaN"),
        (lambda f, xy, fr: (f[:, :10], xy, fr), "expects 24"),
        (lambda f, xy, fr: (f[:0], xy[:0], fr[:0]), "empty"),
        (lambda f, xy, fr: (f[0], xy, fr), r"\[N, C\]"),
        (lambda f, xy, fr: (f, xy[:, :1], fr), r"\[N, 2\]"),
    ],
)
def test_bad_input_is_a_clear_error(make, message):
    rng = np.random.default_rng(1)
    enc = _random_encoder(0)
    good = random_slide(rng, 20, 24, 2)
    with pytest.raises(SlideInputError, match=message) as err:
        enc.encode_batch([good, make(*good)], names=["good", "bad-slide"])
    assert "bad-slide" in str(err.value)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        SlideEncoderConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        SlideEncoderConfig(pooling="max")
    with pytest.raises(KeyError, match="known"):
        SlideEncoderConfig(attention_backend="nope")


def test_cls_pooling_and_ablation_switches():
    rng = np.random.default_rng(2)
    feats, coords, frag = random_slide(rng, 50, 24, 3)
    enc = _random_encoder(0, pooling="cls")
    out = enc.encode(feats, coords, frag)
    assert out["slide_embedding"].shape == (32,)
    assert torch.equal(out["slide_embedding"], out["cls"])
    # no RoPE: translating one patch leaves everything unchanged
    nope = _random_encoder(0, use_rope=False)
    moved = coords.clone()
    moved[0] += 256 * 9
    assert rel_err(nope.encode(feats, moved, frag)["slide_embedding"], nope.encode(feats, coords, frag)["slide_embedding"]) < 1e-6
    # no fragment mask: fragments no longer matter
    nomask = _random_encoder(0, fragment_mask=False)
    assert rel_err(nomask.encode(feats, coords, frag)["slide_embedding"], nomask.encode(feats, coords, None)["slide_embedding"]) < 1e-5


def test_rope_unit_in_micrometres_needs_mpp():
    rng = np.random.default_rng(3)
    feats, coords, frag = random_slide(rng, 30, 24, 2)
    enc = _random_encoder(0, rope_unit_um=128.0)
    with pytest.raises(SlideInputError, match="mpp"):
        enc.encode(feats, coords, frag)
    a = enc.encode(feats, coords, frag, mpp=0.5)["slide_embedding"]  # unit = 256 px
    b = _random_encoder(0).encode(feats, coords, frag)["slide_embedding"]
    assert rel_err(a, b) < 1e-6


def test_rope_attention_map_stays_in_the_query_fragment():
    from pathalign.evaluate.attention_plot import rope_attention

    rng = seeded_rng()
    enc = _random_encoder(int(rng.integers(1 << 30)))
    feats, coords, frag = random_slide(rng, 90, 24, 4)
    q = int(rng.integers(90))
    attn = rope_attention(enc, feats, coords, frag, q)
    inside = (frag == frag[q]).numpy()
    assert attn.shape == (90,) and (attn[~inside] == 0).all() and (attn[inside] > 0).all()
    assert attn.sum() == pytest.approx(1.0, abs=1e-5)  # prefix tokens are their own segment
    # positions matter: moving the query's fragment-mates changes the map
    moved = coords.clone()
    moved[torch.from_numpy(inside)] = moved[torch.from_numpy(inside)].flip(0)
    assert not np.allclose(rope_attention(enc, feats, moved, frag, q), attn)
