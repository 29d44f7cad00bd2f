"""``pathalign heatmap``: the scores are what the model computes (against direct recomputations here), the
outlines follow the patches, and the QuPath export keeps QuPath's GeoJSON rules."""
from __future__ import annotations

import json
import math
import uuid

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import random_slide, seeded_rng
from pathalign.cli import main
from pathalign.evaluate.heatmap import compute_heatmaps
from pathalign.evaluate.heatmap_plot import fragment_outline_segments
from pathalign.io.features import write_patch_file
from pathalign.io.heatmaps import read_heatmaps
from pathalign.io.qupath import fragment_annotations, patch_features, write_qupath_geojson
from pathalign.io.tissue import Fragment
from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel

C = 16


def _model(seed: int) -> PathAlignModel:
    torch.manual_seed(seed)
    model = PathAlignModel(PathAlignConfig(["wsi", "rna"], {"wsi": C, "rna": 6}, embed_dim=8, proj_dim=8, dropout=0.0))
    return model.eval()


def _slide_file(tmp_path, rng, n=60, fragments=3):
    feats, coords, frag = random_slide(rng, n, C, fragments)
    path = tmp_path / "slide_a.h5"
    write_patch_file(path, coords.numpy(), frag.numpy(), {"patch_size": 256, "patch_size_level0": 256,
                                                          "target_magnification": 20.0, "mpp": 0.5},
                     feats.numpy(), {"encoder": "test"})
    return path, feats, coords, frag


def _dense_received(encoder, feats, coords, frag, block):
    """Attention received per patch (input order) from a dense [H, T, T] softmax with the segment mask."""
    packed = encoder.pack([(feats, coords, frag)])
    blk = encoder.blocks[block]
    with torch.no_grad():
        x, rope, rope_segs = encoder.run_blocks(packed, stop=block)
        segs = rope_segs if blk.rope_block else packed.global_segments
        q, k, _ = blk.attn.qkv_rotated(blk.norm1(x), rope if blk.rope_block else None)
        ids = segs.ids()
        logits = torch.einsum("qhd,khd->hqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(ids[None, :, None] != ids[None, None, :], float("-inf"))
        received = torch.softmax(logits, -1).sum(1).mean(0)  # [T]
    out = np.empty(len(feats))
    out[packed.order[0]] = received[packed.patch_slots].numpy()
    return out


def test_attention_scores_equal_a_dense_recomputation_and_stay_in_their_segment(tmp_path):
    rng = seeded_rng()
    path, feats, coords, frag = _slide_file(tmp_path, rng)
    model = _model(int(rng.integers(1 << 30)))
    hm = compute_heatmaps(model, path)
    enc = model.slide_encoder
    assert len(hm.scores) == len(enc.blocks)
    for b, blk in enumerate(enc.blocks):
        name = f"attention/block{b}_{'rope' if blk.rope_block else 'nope'}"
        ref = _dense_received(enc, feats, coords, frag, b)
        np.testing.assert_allclose(hm.scores[name], ref, rtol=1e-4, atol=1e-5, err_msg=name)
        if blk.rope_block:  # each fragment's queries spend all their attention inside it: its scores sum to its size
            for f in np.unique(frag.numpy()):
                members = frag.numpy() == f
                assert abs(hm.scores[name][members].sum() - members.sum()) < 1e-3, (name, f)


def test_attention_in_query_chunks_equals_one_chunk(tmp_path):
    from pathalign.evaluate.heatmap import attention_received

    rng = seeded_rng()
    _, feats, coords, frag = _slide_file(tmp_path, rng, n=90, fragments=2)
    enc = _model(int(rng.integers(1 << 30))).slide_encoder
    packed = enc.pack([(feats, coords, frag)])
    for b in range(len(enc.blocks)):
        torch.testing.assert_close(attention_received(enc, packed, b, query_chunk=7),
                                   attention_received(enc, packed, b, query_chunk=10_000))


def test_alignment_and_query_scores_equal_the_adapters_applied_by_hand(tmp_path):
    rng = seeded_rng()
    path, feats, coords, frag = _slide_file(tmp_path, rng)
    model = _model(int(rng.integers(1 << 30)))
    z_rna = torch.from_numpy(rng.standard_normal(8).astype(np.float32))
    hm = compute_heatmaps(model, path, blocks=[], targets={"rna": z_rna.numpy()}, queries=[5])
    with torch.no_grad():
        out = model.slide_encoder.encode(feats, coords, frag)
        u = torch.cat([feats, out["patch_tokens"]], 1)  # [N, C+D], input order
        # the slide embedding is the mean of the patch vectors: what makes them the patches' share of it
        torch.testing.assert_close(u.mean(0), out["slide_embedding"], rtol=1e-5, atol=1e-5)
        w_s = model.pair_heads.adapters["wsi->rna"].weight
        w_r = model.pair_heads.adapters["rna->wsi"].weight
        expected = F.normalize(u @ w_s.T, dim=-1) @ F.normalize(w_r @ z_rna, dim=0)
        tok = F.normalize(out["patch_tokens"], dim=-1)
    np.testing.assert_allclose(hm.scores["align/rna"], expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hm.scores["query/5"], (tok @ tok[5]).numpy(), rtol=1e-4, atol=1e-5)
    assert abs(hm.scores["query/5"][5] - 1) < 1e-5


def test_fragment_outlines_are_the_perimeters_of_the_patch_squares():
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import box
    from shapely.ops import unary_union

    rng = seeded_rng()
    _, coords, frag = random_slide(rng, 70, 4, 3)
    coords, frag = coords.numpy(), frag.numpy()
    segs = fragment_outline_segments(coords, frag, 256)
    for f in np.unique(frag):
        union = unary_union([box(x, y, x + 256, y + 256) for x, y in coords[frag == f]])
        boundary = union.boundary
        mine = [s for s in segs if shapely.geometry.Point(s.mean(0)).within(union.buffer(1e-6))]
        assert abs(sum(np.linalg.norm(s[1] - s[0]) for s in mine) - boundary.length) < 1e-6, f
        for s in mine:  # every segment lies on the fragment's boundary
            assert boundary.distance(shapely.geometry.LineString(s)) < 1e-9


def _check_qupath_feature(feat: dict) -> str:
    """QuPath's reader (PathObjectTypeAdapters.java): a Feature, a Polygon geometry with closed rings, objectType one
    of QuPath's names, measurements a name -> number object, color a 3-int list, id a UUID."""
    from shapely.geometry import shape

    assert feat["type"] == "Feature"
    uuid.UUID(feat["id"])
    geom = feat["geometry"]
    assert geom["type"] == "Polygon" and all(r[0] == r[-1] for r in geom["coordinates"])
    assert shape(geom).is_valid
    props = feat["properties"]
    assert props["objectType"] in ("tile", "detection", "annotation", "cell", "tmaCore")
    meas = props.get("measurements", {})
    assert isinstance(meas, dict) and all(isinstance(k, str) and math.isfinite(v) for k, v in meas.items())
    if "classification" in props:
        assert isinstance(props["classification"]["name"], str) and len(props["classification"]["color"]) == 3
    return props["objectType"]


def test_qupath_geojson_follows_qupaths_rules(tmp_path):
    pytest.importorskip("shapely")
    from shapely.geometry import box, shape

    rng = seeded_rng()
    _, coords, frag = random_slide(rng, 20, 4, 2)
    scores = {"align/rna": rng.standard_normal(20).astype(np.float32)}
    scores["align/rna"][3] = np.nan  # a missing score is left out, never written as NaN
    ring = np.array([[0.0, 0.0], [600.0, 0.0], [600.0, 500.0], [0.0, 500.0]])
    objs = patch_features("s1", coords.numpy(), 256, scores, "tile", frag.numpy())
    objs += fragment_annotations("s1", [Fragment(7, ring)])
    path = write_qupath_geojson(tmp_path / "s1.geojson", objs)
    data = json.loads(path.read_text())  # strict JSON: NaN would not parse with parse_constant raising
    json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert data["type"] == "FeatureCollection"
    kinds = [_check_qupath_feature(f) for f in data["features"]]
    assert kinds == ["tile"] * 20 + ["annotation"]
    for i, f in enumerate(data["features"][:20]):
        x, y = coords[i].tolist()
        assert shape(f["geometry"]).equals(box(x, y, x + 256, y + 256))  # level-0 px, top-left corner at (x, y)
        assert ("align/rna" in f["properties"]["measurements"]) == (i != 3)
        assert f["properties"]["measurements"]["fragment"] == frag[i]
    assert shape(data["features"][-1]["geometry"]).area == 600 * 500
    assert len({f["id"] for f in data["features"]}) == 21


def test_heatmap_command_writes_scores_pictures_and_qupath_file(tmp_path, capsys):
    rng = seeded_rng()
    path, feats, coords, frag = _slide_file(tmp_path, rng, n=40, fragments=2)
    model = _model(int(rng.integers(1 << 30)))
    model.save_pretrained(tmp_path / "model")
    z = rng.standard_normal(8).astype(np.float32)
    with h5py.File(tmp_path / "emb.h5", "w") as fh:
        text = h5py.string_dtype()  # as embed writes ids
        fh.create_dataset("wsi/ids", data=np.array(["slide_a"], dtype=object), dtype=text)
        fh.create_dataset("wsi/case_ids", data=np.array(["TCGA-AA-0001"], dtype=object), dtype=text)
        fh["wsi/embeddings"] = np.zeros((1, model.output_dim("wsi")), np.float32)
        fh.create_dataset("rna/ids", data=np.array(["TCGA-AA-0002", "TCGA-AA-0001"], dtype=object), dtype=text)
        fh["rna/embeddings"] = np.stack([z * 0 + 1, z])
    rc = main(["heatmap", "--model", str(tmp_path / "model"), "--features", str(path), "--embeddings",
               str(tmp_path / "emb.h5"), "--query", "0", "--out", str(tmp_path / "hm")])
    assert rc == 0, capsys.readouterr().err
    hm = read_heatmaps(tmp_path / "hm" / "slide_a.heatmaps.h5")
    direct = compute_heatmaps(model, path, targets={"rna": z}, queries=[0])
    assert set(hm.scores) == set(direct.scores) and "align/rna" in hm.scores
    for k in direct.scores:
        np.testing.assert_allclose(hm.scores[k], direct.scores[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert len(list((tmp_path / "hm").glob("slide_a_*.png"))) == len(hm.scores)
    qp = json.loads((tmp_path / "hm" / "slide_a.qupath.geojson").read_text())
    assert len(qp["features"]) == 40 and set(qp["features"][0]["properties"]["measurements"]) == {*hm.scores,
                                                                                                    "fragment"}


def test_heatmap_command_errors_name_what_is_wrong(tmp_path, capsys):
    rng = seeded_rng()
    path, *_ = _slide_file(tmp_path, rng, n=20, fragments=1)
    model = _model(1)
    model.save_pretrained(tmp_path / "model")
    rc = main(["heatmap", "--model", str(tmp_path / "model"), "--features", str(path), "--blocks", "99",
               "--out", str(tmp_path / "hm")])
    err = capsys.readouterr().err
    assert rc == 2 and "block 99 does not exist" in err and "Traceback" not in err
    rc = main(["heatmap", "--model", str(tmp_path / "model"), "--features", str(path), "--query", "20",
               "--out", str(tmp_path / "hm")])
    err = capsys.readouterr().err
    assert rc == 2 and "query patch 20 does not exist" in err
