"""Patient-level encoding: a patient's slides packed as one sequence (one prefix, RoPE per slide and fragment,
NoPE over all of the patient's slides), the token cap across slides, training and embedding at that level."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from helpers import random_slide, seeded_rng
from pathalign import SlideEncoder
from pathalign.models.packing import allocate_tokens, draw_patient_rows
from pathalign.models.rope import apply_rope
from test_slide_encoder import _LargestTensor


def _encoder(seed: int, **kw) -> SlideEncoder:
    torch.manual_seed(seed)
    return SlideEncoder.from_preset("tiny", input_dim=24, **kw).eval()


def _patient(rng, sizes, frags=None, plain=()):
    """Slides of one patient: ``sizes`` patches each, ``frags`` fragments each, slides in ``plain`` without ids."""
    frags = frags or [3] * len(sizes)
    out = []
    for s, (n, f) in enumerate(zip(sizes, frags)):
        feats, xy, fr = random_slide(rng, n, 24, f)
        out.append((feats, xy, None if s in plain else fr))
    return out


# ---------------------------------------------------------------- one slide = the slide-level path
@pytest.mark.parametrize("fragments", [True, False])
@pytest.mark.parametrize("options", [{}, {"fragment_mask": False}, {"pooling": "cls"}])
def test_one_slide_patient_equals_the_slide_level_path(fragments, options):
    rng = seeded_rng()
    enc = _encoder(int(rng.integers(1 << 30)), **options)
    slides = [_patient(rng, [int(rng.integers(1, 90))], plain=() if fragments else (0,))[0] for _ in range(3)]
    with torch.no_grad():
        per_patient = enc.encode_patients([[s] for s in slides])
        per_slide = enc.encode_batch(slides)
    for p, s in zip(per_patient, per_slide):
        assert torch.allclose(p["slide_embedding"], s["slide_embedding"], atol=1e-6, rtol=1e-5)
        assert torch.allclose(p["patch_tokens"][0], s["patch_tokens"], atol=1e-6, rtol=1e-5)
        assert torch.allclose(p["cls"], s["cls"], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the layout
def test_packing_layout_one_prefix_fragments_offset_per_slide():
    rng = seeded_rng()
    enc = _encoder(0)
    a, b, c = _patient(rng, [20, 9, 7], frags=[3, 2, 1], plain=(2,))
    # the same fragment ids in two slides are still two segments
    b = (b[0], b[1], torch.where(b[2] == b[2][0], a[2][0], b[2]))
    packed = enc.pack_patients([[a, b, c], [b]])
    n_prefix = enc.config.n_prefix
    assert packed.prefix_slots.shape == (2, n_prefix)  # one prefix per patient
    assert packed.global_segments.lengths == [n_prefix + 36, n_prefix + 9]
    assert packed.fragment_segments.lengths[0] == n_prefix
    assert sum(packed.fragment_segments.lengths[1:7]) == 36 and len(packed.fragment_segments.lengths) == 1 + 6 + 1 + 2
    assert packed.slide_segments.lengths[:4] == [n_prefix, 20, 9, 7]
    assert packed.slides_per_item == [[20, 9, 7], [9]]


def _slide_of_token(packed, slide_sizes) -> np.ndarray:
    """Per token of the packed sequence, its (patient, slide) as ``patient * 100 + slide``; -1 for prefix tokens."""
    label = np.full(packed.total, -1)
    slots = packed.patch_slots.numpy()
    start = 0
    for p, (n, order) in enumerate(zip(packed.n_patches, packed.order)):
        which = np.repeat(np.arange(len(slide_sizes[p])), slide_sizes[p])[order]  # input slide of each packed patch
        label[slots[start:start + n]] = p * 100 + which
        start += n
    return label


def _attention_probabilities(enc: SlideEncoder, packed, block: int) -> torch.Tensor:
    """Dense ``[H, T, T]`` attention probabilities of ``block`` (reference computation with a T x T mask)."""
    x, rope, rope_segments = enc.run_blocks(packed, stop=block)
    blk = enc.blocks[block]
    segments = rope_segments if blk.rope_block else packed.global_segments
    q, k, _ = blk.attn.qkv_rotated(blk.norm1(x), rope if blk.rope_block else None)  # [T,H,Dh]
    ids = segments.ids()
    logits = torch.einsum("thd,shd->hts", q, k) / q.shape[-1] ** 0.5
    logits = logits.masked_fill(ids[None, :, None] != ids[None, None, :], float("-inf"))
    return logits.softmax(-1)


@pytest.mark.parametrize("options", [{}, {"fragment_mask": False}])
def test_attention_across_slides_is_exactly_zero_in_rope_blocks(options):
    rng = seeded_rng()
    enc = _encoder(int(rng.integers(1 << 30)), **options)
    sizes = [[30, 17, 11], [12, 25]]
    patients = [_patient(rng, s, plain=(1,)) for s in sizes]
    with torch.no_grad():
        packed = enc.pack_patients(patients)
        label = torch.from_numpy(_slide_of_token(packed, sizes))
        patch = label >= 0
        cross = patch[:, None] & patch[None, :] & (label[:, None] != label[None, :])  # [T, T] two different slides
        for i, blk in enumerate(enc.blocks):
            probs = _attention_probabilities(enc, packed, i)
            if blk.rope_block:
                assert (probs[:, cross] == 0).all(), f"block {i}: attention between two slides"
                # a patch token's attention stays in its own slide and sums to 1 there
                same = (label[:, None] == label[None, :]) & patch[:, None]
                assert torch.allclose((probs * same).sum(-1)[:, patch], torch.ones(1), atol=1e-5)
            else:  # the global blocks read the patient's slides together (and never another patient)
                other_patient = patch[:, None] & patch[None, :] & (label[:, None] // 100 != label[None, :] // 100)
                assert (probs[:, other_patient] == 0).all()
                assert (probs[:, cross & ~other_patient] > 0).all()


def test_rope_never_relates_two_slides_translation_of_one_slide_changes_nothing():
    rng = seeded_rng()
    for options in ({}, {"fragment_mask": False}):
        enc = _encoder(int(rng.integers(1 << 30)), **options)
        a, b = _patient(rng, [40, 30], plain=(0, 1))  # no fragment ids: each slide is one RoPE segment
        shift = torch.tensor([int(rng.integers(1, 500)) * 97, int(rng.integers(1, 500)) * 31])
        with torch.no_grad():
            ref = enc.encode_patients([[a, b]])[0]
            moved = enc.encode_patients([[a, (b[0], b[1] + shift, None)]])[0]
            other = enc.encode_patients([[a, (b[0] + 1.0, b[1], None)]])[0]  # slide b's content
        assert rel_err(moved["slide_embedding"], ref["slide_embedding"]) < 1e-5
        # ... while the global blocks do read both: slide a's tokens depend on slide b's patches
        assert rel_err(other["patch_tokens"][0], ref["patch_tokens"][0]) > 1e-3


def test_mpp_stays_per_slide():
    rng = seeded_rng()
    enc = _encoder(int(rng.integers(1 << 30)), rope_unit_um=128.0)
    a, b = _patient(rng, [25, 25])
    with torch.no_grad():
        packed = enc.pack_patients([[a, b]], mpps=[[0.5, 0.25]])
        units = packed.patch_units.numpy()
        slide = np.repeat([0, 1], [25, 25])[packed.order[0]]
        assert np.allclose(units[slide == 0], 256.0) and np.allclose(units[slide == 1], 512.0)
        # a slide scanned at twice the resolution with doubled coordinates is the same tissue: same embedding
        same = enc.encode_patients([[a, (b[0], b[1] * 2, b[2])]], mpps=[[0.5, 0.125]])[0]["slide_embedding"]
        ref = enc.encode_patients([[a, b]], mpps=[[0.5, 0.25]])[0]["slide_embedding"]
    assert rel_err(same, ref) < 1e-5


# ---------------------------------------------------------------- backends and memory
@pytest.mark.parametrize("backend", ["segment", "nested"])
def test_patient_backends_match_dense_reference(backend):
    rng = seeded_rng()
    enc = _encoder(int(rng.integers(1 << 30)))
    patients = [_patient(rng, [40, 1, 22], frags=[4, 1, 22]), _patient(rng, [35]), _patient(rng, [9, 14], plain=(0,))]
    enc.set_attention_backend("dense")
    with torch.no_grad():
        ref = enc.encode_patients(patients)
        enc.set_attention_backend(backend)
        out = enc.encode_patients(patients)
    for a, b in zip(out, ref):
        assert rel_err(a["slide_embedding"], b["slide_embedding"]) < 1e-5
        for x, y in zip(a["patch_tokens"], b["patch_tokens"]):
            assert rel_err(x, y) < 1e-5


def test_patient_path_allocates_nothing_of_size_t_by_t():
    rng = np.random.default_rng(0)
    enc = _encoder(0)
    patients = [_patient(rng, [400, 300], frags=[8, 6]), _patient(rng, [200], frags=[3])]
    t = 900 + 2 * enc.config.n_prefix
    for backend, expect_big in (("auto", False), ("dense", True)):
        enc.set_attention_backend(backend)
        with _LargestTensor() as probe, torch.no_grad():
            enc.encode_patients(patients)
        assert (probe.largest >= t * t) == expect_big, (backend, probe.largest, t * t)


def test_patient_gradients_flow_through_every_slide():
    rng = seeded_rng()
    enc = _encoder(int(rng.integers(1 << 30))).train()
    a, b = _patient(rng, [20, 15])
    a = (a[0].requires_grad_(True), a[1], a[2])
    b = (b[0].requires_grad_(True), b[1], b[2])
    enc.forward_patients([[a, b]]).square().sum().backward()
    assert a[0].grad.abs().sum() > 0 and b[0].grad.abs().sum() > 0


# ---------------------------------------------------------------- the token cap
def test_allocate_tokens_is_proportional_and_keeps_every_slide():
    assert allocate_tokens([300, 100], 200) == [150, 50]
    assert allocate_tokens([300, 100], 1000) == [300, 100]  # within the cap: everything
    assert allocate_tokens([5, 1000, 3], 10) == [1, 8, 1]  # every slide keeps at least one patch
    assert allocate_tokens([5, 5, 5], 2) == [1, 1, 0]  # fewer tokens than slides: the earlier slides
    rng = seeded_rng()
    for _ in range(200):
        n = rng.integers(1, 500, int(rng.integers(1, 5))).tolist()
        cap = int(rng.integers(1, 1200))
        keep = allocate_tokens(n, cap)
        assert sum(keep) == min(cap, sum(n)) and all(0 <= k <= m for k, m in zip(keep, n)), (n, cap, keep)
        if cap >= len(n):
            assert min(keep) >= 1
        share = np.array(n) * min(cap, sum(n)) / sum(n)  # proportional, up to the one patch every slide keeps
        assert np.all(np.abs(np.array(keep) - share) < 2), (n, cap, keep)


def test_draw_patient_rows_is_seeded_and_reads_only_the_lengths():
    rows = draw_patient_rows([300, 100], 200, seed=7)
    assert [len(r) for r in rows] == [150, 50]
    assert all((np.diff(r) > 0).all() for r in rows)
    again = draw_patient_rows([300, 100], 200, seed=7)
    assert all((x == y).all() for x, y in zip(rows, again))
    assert not (draw_patient_rows([300, 100], 200, seed=8)[0] == rows[0]).all()
    assert draw_patient_rows([30, 10], 200, seed=7) == [None, None]
