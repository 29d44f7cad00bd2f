"""Patient-level encoding: a patient's slides packed as one sequence (one prefix, RoPE per slide and fragment,
NoPE over all of the patient's slides), the token cap across slides, training and embedding at that level."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import rel_err
from helpers import random_slide, seeded_rng
from pathalign import SlideEncoder
from pathalign.models.packing import allocate_tokens, draw_patient_rows
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


# ---------------------------------------------------------------- training batches, training, embedding
def _multi_slide_cohort(tmp_path):
    """The :mod:`cohort_tables` cohort with 1-3 slides per patient of 5-60 patches in 1-3 fragments."""
    import pandas as pd

    from cohort_tables import patients, write_tables
    from pathalign.cohort import CohortSources, build_cohort
    from pathalign.io.features import write_patch_file

    folder = write_tables(tmp_path / "in")
    rng = np.random.default_rng(3)
    rows = []
    feats = tmp_path / "features"
    feats.mkdir()
    for i, p in enumerate(patients()):
        for k in range(1 + i % 3):
            sid = f"{p}-S{k + 1}"
            n = int(rng.integers(5, 60))
            coords = np.stack(np.divmod(np.arange(n), 8), 1)[:, ::-1] * 256
            frag = (np.arange(n) * 3 // n).astype(np.int64)
            write_patch_file(feats / f"{sid}.h5", coords, frag, {"patch_size_level0": 256},
                             rng.standard_normal((n, 16)).astype(np.float16), {"encoder": "pathalign-stats"})
            rows.append((sid, p))
    pd.DataFrame(rows, columns=["slide_id", "case_id"]).to_csv(folder / "slides.tsv", sep="\t", index=False)
    build_cohort(CohortSources(clinical=str(folder / "clinical.tsv"), rna=str(folder / "rna.tsv"),
                               cnv=str(folder / "cnv.tsv"), slides=str(folder / "slides.tsv"),
                               features=str(feats)), tmp_path / "cohort", progress=False)
    return tmp_path / "cohort", feats


@pytest.fixture(scope="module")
def multi_slide(tmp_path_factory):
    return _multi_slide_cohort(tmp_path_factory.mktemp("multi"))


def test_patient_level_batches_hold_every_slide_under_the_cap(multi_slide):
    from pathalign.cohort import load_cohort
    from pathalign.cohort.model_view import CohortData
    from pathalign.models.preprocessing import MODEL_TRANSFORMS
    from pathalign.train.data import BatchSpec, StepBatches

    cohort, _ = multi_slide
    data = CohortData(load_cohort(cohort), None, ["wsi", "rna"], transforms=MODEL_TRANSFORMS)
    idx = data.eligible(data.ids)
    batches = StepBatches(data, idx, BatchSpec(5, 12, 40, 0.0, wsi_level="patient"))
    batch = batches[3]
    assert len(batch["slides"]) == len(batch["slide_ids"]) == len(batch["slide_rows"])
    capped = 0
    for r, slides, names in zip(batch["slide_rows"].tolist(), batch["slides"], batch["slide_ids"]):
        i = data.index[batch["patients"][r]]
        assert names == data.slides[i] and len(slides) == len(names)  # all of the patient's slides
        lengths = [data.reader.n_patches(s) for s in names]
        got = [len(s[0]) for s in slides]
        assert got == allocate_tokens(lengths, 40) and sum(got) <= 40
        capped += sum(lengths) > 40
    assert capped > 0 and any(len(s) > 1 for s in batch["slides"])
    again = StepBatches(data, idx, BatchSpec(5, 12, 40, 0.0, wsi_level="patient"))[3]  # a function of (seed, step)
    for a, b in zip(batch["slides"], again["slides"]):
        assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    slide_level = StepBatches(data, idx, BatchSpec(5, 12, 40, 0.0))[3]  # the default is unchanged: one slide each
    assert all(isinstance(s, tuple) and len(s[0]) <= 40 for s in slide_level["slides"])


@pytest.fixture(scope="module")
def patient_run(multi_slide, tmp_path_factory):
    from cohort_tables import train_cfg
    from pathalign.train.trainer import Trainer

    cohort, _ = multi_slide
    run = tmp_path_factory.mktemp("prun") / "run"
    Trainer(cohort, run, train_cfg(steps=2, wsi_level="patient", max_tokens=48, modalities=["wsi", "rna"],
                                   val_every=1)).fit()
    return cohort, run


def test_train_at_patient_level_records_it_and_old_configs_load_as_slide(patient_run, tmp_path):
    import json
    import shutil

    from pathalign.models.pathalign_model import load_model

    _, run = patient_run
    model = load_model(run / "model")
    assert model.config.wsi_level == "patient"
    assert json.loads((run / "model" / "config.json").read_text())["model_args"]["wsi_level"] == "patient"
    old = tmp_path / "old"
    shutil.copytree(run / "model", old)
    cfg = json.loads((old / "config.json").read_text())
    assert cfg["format_version"] == 2  # a reader of format 1 (pathalign 0.2) says "upgrade", not "unknown key"
    del cfg["model_args"]["wsi_level"]  # a model saved before the setting existed
    cfg["format_version"] = 1
    (old / "config.json").write_text(json.dumps(cfg))
    assert load_model(old).config.wsi_level == "slide"
    cfg["format_version"] = 3
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="format_version 3 is newer .*upgrade pathalign"):
        load_model(old)


def test_train_config_refuses_a_bad_level():
    from cohort_tables import train_cfg

    with pytest.raises(Exception, match="wsi_level"):
        train_cfg(wsi_level="tile")
    with pytest.raises(Exception, match="training setting"):
        train_cfg(model_overrides={"wsi_level": "patient"})


def test_embed_at_patient_level_gives_each_slide_its_patients_embedding(patient_run, tmp_path):
    from pathalign.cohort import load_cohort
    from pathalign.evaluate.embed import embed_with_model
    from pathalign.io.embeddings import read_embeddings
    from pathalign.io.features import read_patch_features
    from pathalign.models.pathalign_model import load_model

    cohort, run = patient_run
    out = tmp_path / "emb.h5"
    embed_with_model(run / "model", cohort, out, batch_size=5, progress=False)
    emb = read_embeddings(out)
    assert emb["_attrs"]["wsi_level"] == "patient"
    model = load_model(run / "model")
    man = load_cohort(cohort).manifest
    feats = load_cohort(cohort).meta["slides_dir"]
    g = emb["wsi"]
    for case, sids in zip(man.case_id[:7], man.slide_ids[:7]):
        slides = [tuple(torch.from_numpy(a) for a in read_patch_features(f"{feats}/{s}.h5").as_inputs()) for s in sids]
        with torch.no_grad():
            ref = model.encode_patient([slides])[0].numpy()
        for s in sids:
            row = g["ids"].index(s)
            assert g["case_ids"][row] == case
            assert np.allclose(g["embeddings"][row], ref, atol=1e-5)
    # the same model at slide level: one embedding per slide, a one-slide patient's equal to the patient level's
    slide_out = tmp_path / "slides.h5"
    embed_with_model(run / "model", cohort, slide_out, progress=False, wsi_level="slide")
    per_slide = read_embeddings(slide_out)
    assert per_slide["_attrs"]["wsi_level"] == "slide"
    one = [sids[0] for sids in man.slide_ids if len(sids) == 1]
    for s in one:
        a = per_slide["wsi"]["embeddings"][per_slide["wsi"]["ids"].index(s)]
        b = g["embeddings"][g["ids"].index(s)]
        assert np.allclose(a, b, atol=1e-5)
    two = next(sids for sids in man.slide_ids if len(sids) > 1)
    rows = [per_slide["wsi"]["ids"].index(s) for s in two]
    assert not np.allclose(per_slide["wsi"]["embeddings"][rows[0]], per_slide["wsi"]["embeddings"][rows[1]])


def test_embed_over_the_cap_encodes_a_seeded_proportional_subset(patient_run, tmp_path):
    from pathalign.cohort import load_cohort
    from pathalign.evaluate.embed import embed_with_model, patient_token_seed
    from pathalign.io.embeddings import read_embeddings
    from pathalign.io.features import read_patch_features
    from pathalign.models.pathalign_model import load_model

    cohort, run = patient_run
    out = tmp_path / "capped.h5"
    summary = embed_with_model(run / "model", cohort, out, progress=False, max_tokens=30)
    emb = read_embeddings(out)
    man = load_cohort(cohort).manifest
    feats = load_cohort(cohort).meta["slides_dir"]
    lengths = {c: [len(read_patch_features(f"{feats}/{s}.h5")) for s in sids]
               for c, sids in zip(man.case_id, man.slide_ids)}
    over = {c: sum(n) for c, n in lengths.items() if sum(n) > 30}
    assert emb["_attrs"]["capped_patients"] == over and over
    assert any("--max-tokens 30" in w for w in summary.warnings)
    case = next(iter(over))
    sids = man.slide_ids[man.case_id.tolist().index(case)]
    rows = draw_patient_rows(lengths[case], 30, patient_token_seed(case))
    slides = []
    for s, r in zip(sids, rows):
        arrays = read_patch_features(f"{feats}/{s}.h5").as_inputs()
        slides.append(tuple(torch.from_numpy(a if r is None else a[r]) for a in arrays))
    with torch.no_grad():
        ref = load_model(run / "model").encode_patient([slides])[0].numpy()
    assert np.allclose(emb["wsi"]["embeddings"][emb["wsi"]["ids"].index(sids[0])], ref, atol=1e-5)
    # under the cap a patient is encoded whole: the same as without a cap
    full = read_embeddings(embed_with_model(run / "model", cohort, tmp_path / "full.h5", progress=False) and
                           tmp_path / "full.h5")
    small = next(c for c in lengths if c not in over)
    s0 = man.slide_ids[man.case_id.tolist().index(small)][0]
    assert np.allclose(full["wsi"]["embeddings"][full["wsi"]["ids"].index(s0)],
                       emb["wsi"]["embeddings"][emb["wsi"]["ids"].index(s0)], atol=1e-6)
    with pytest.raises(Exception, match="max-tokens"):
        embed_with_model(run / "model", cohort, tmp_path / "x.h5", progress=False, wsi_level="slide", max_tokens=30)


def test_gradient_caching_at_patient_level_equals_the_full_batch(multi_slide):
    from pathalign.cohort import load_cohort
    from pathalign.cohort.model_view import CohortData
    from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel
    from pathalign.models.preprocessing import MODEL_TRANSFORMS
    from pathalign.models.siglip import MultimodalSigLIPLoss
    from pathalign.train.data import BatchSpec, StepBatches
    from pathalign.train.gradcache import gradcache_step, plan_micro_batches, row_tokens, slice_batch

    cohort, _ = multi_slide
    data = CohortData(load_cohort(cohort), None, ["wsi", "rna"], transforms=MODEL_TRANSFORMS)
    batch = StepBatches(data, data.eligible(data.ids), BatchSpec(1, 10, 50, 0.0, wsi_level="patient"))[0]
    tokens = row_tokens(batch, 3)
    for r, slides in zip(batch["slide_rows"].tolist(), batch["slides"]):
        assert tokens[r] == sum(len(s[0]) for s in slides) + 3  # one prefix per patient
    torch.manual_seed(0)
    model = PathAlignModel(PathAlignConfig(["wsi", "rna"], data.input_dims, dropout=0.0, embed_dim=32, proj_dim=16,
                                           wsi_level="patient")).train()
    loss_fn = MultimodalSigLIPLoss(model.config.balance)
    loss_fn(model(batch)).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    parts = [slice_batch(batch, a, b) for a, b in plan_micro_batches(tokens, 3, 80)]
    assert len(parts) > 3
    gradcache_step(lambda mb: model(mb, project=False), lambda e, v: loss_fn(model(embeddings=e, valid=v)), parts)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == ref.keys()
    assert rel_err(torch.cat([got[n].flatten() for n in ref]), torch.cat([ref[n].flatten() for n in ref])) < 1e-5


# ---------------------------------------------------------------- the synthetic two-slide trait
def test_paired_trait_truth_is_an_xor_of_two_independent_slide_cues_and_leaves_the_rest_unchanged():
    from pathalign.synth.state import SynthConfig, sample_truth

    plain = sample_truth(SynthConfig(patients=400, seed=4))
    paired = sample_truth(SynthConfig(patients=400, seed=4, paired_trait=True))
    assert (paired.n_slides == np.where(paired.has_wsi, 2, 0)).all()
    xor = paired.paired_cue_1 != paired.paired_cue_2
    assert (paired.paired_trait == np.where(xor, "discordant", "concordant")).all()
    for cue in ("paired_cue_1", "paired_cue_2"):  # each cue alone says nothing of the trait
        assert abs(paired.loc[xor, cue].mean() - paired.loc[~xor, cue].mean()) < 0.12
    same = [c for c in plain.columns if c != "n_slides"]
    pd.testing.assert_frame_equal(plain[same], paired[same])  # every other draw of the seed is unchanged


def test_paired_trait_is_in_rna_and_the_cue_on_its_slide():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from pathalign.synth.omics import rna_table
    from pathalign.synth.slides import render_slide, texture_bank
    from pathalign.synth.state import SynthConfig, sample_truth

    cfg = SynthConfig(patients=300, seed=6, genes=200, paired_trait=True)
    truth = sample_truth(cfg)
    rna = rna_table(cfg, truth)
    cols = [c for c in rna.columns if c[13:16] == "01A" and not c.startswith("TCGA-ZZ")]
    x = np.log2(rna[cols].to_numpy(float).T + 1)
    y = truth.set_index("case_id").loc[[c[:12] for c in cols], "paired_trait"].to_numpy()
    assert cross_val_score(LogisticRegression(C=0.1, max_iter=3000), (x - x.mean(0)) / x.std(0), y, cv=5).mean() > 0.9
    plain = rna_table(SynthConfig(patients=300, seed=6, genes=200), sample_truth(SynthConfig(patients=300, seed=6)))
    assert list(plain.columns) == list(rna.columns) and not np.allclose(plain.to_numpy(), rna.to_numpy())
    # the cue: pale, low-eosin lakes in the stroma of a slide that has it
    params = cfg.slide_params
    bank = texture_bank(0, params["nucleus_contrast"])
    pale = {}
    for mucin in (False, True):
        img, frag = render_slide(np.random.default_rng(2), bank, "BRCA", 0, "left", np.zeros(4), 512, 3, "low",
                                 dict(params, mucin=mucin))
        od = -np.log(np.clip(img[frag >= 0].astype(float), 1, 255) / 255).sum(-1)
        pale[mucin] = float((od < 0.35).mean())
    assert pale[True] > pale[False] + 0.05, pale


def test_synth_paired_trait_writes_two_slides_a_label_and_its_mechanism(tmp_path):
    from pathalign.synth import SynthConfig, generate_cohort
    from pathalign.synth.state import PAIRED_MECHANISM

    truth = generate_cohort(tmp_path, SynthConfig(patients=6, seed=1, slide_size=512, genes=40, probes=30,
                                                  paired_trait=True), workers=1, progress=False)
    slides = pd.read_csv(tmp_path / "slides.tsv", sep="\t")
    assert (slides.groupby("case_id").size() == 2).all() and set(slides.case_id) == set(truth.case_id[truth.has_wsi])
    clinical = pd.read_csv(tmp_path / "clinical.tsv", sep="\t")
    assert set(clinical.paired_trait) <= {"concordant", "discordant"}
    assert "paired_cue_1" not in clinical  # the per-slide cues stay hidden
    assert PAIRED_MECHANISM in (tmp_path / "truth.md").read_text()


@pytest.mark.slow
def test_cli_train_and_embed_at_patient_level(multi_slide, tmp_path, capsys):
    import h5py

    from pathalign.cli import main
    from pathalign.models.pathalign_model import load_model

    cohort, _ = multi_slide
    run = tmp_path / "run"
    assert main(["train", "--cohort", str(cohort), "--out", str(run), "--preset", "tiny", "--steps", "1",
                 "--batch-size", "6", "--modalities", "wsi,rna", "--wsi-level", "patient", "--max-tokens", "40",
                 "--val-every", "0", "--diagnostics-every", "0", "--quiet"]) == 0
    assert load_model(run / "model").config.wsi_level == "patient"
    out = tmp_path / "emb.h5"
    assert main(["embed", "--model", str(run / "model"), "--cohort", str(cohort), "--out", str(out),
                 "--max-tokens", "30", "--quiet"]) == 0
    with h5py.File(out, "r") as fh:
        assert fh.attrs["wsi_level"] == "patient" and fh.attrs["patient_token_cap"] == 30
    assert "more than --max-tokens 30 patches" in capsys.readouterr().err


def test_resume_refuses_another_level(patient_run):
    from cohort_tables import train_cfg
    from pathalign.train.trainer import Trainer, TrainingError

    cohort, run = patient_run
    with pytest.raises(TrainingError, match="wsi_level"):
        Trainer(cohort, run, train_cfg(steps=2, wsi_level="slide", max_tokens=48, modalities=["wsi", "rna"],
                                       val_every=1), resume=True)
