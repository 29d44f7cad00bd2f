"""Per-patch heatmaps of a trained model on one slide: where on the slide each signal sits.

Three kinds of score, each a number per patch (input order of the features file):

* ``attention/block<i>``: the attention a patch *receives* in block ``i``, averaged over heads and summed
  over the queries of its segment (its fragment in RoPE blocks, the whole slide in NoPE blocks):
  ``a_j = mean_h sum_i A_h[i, j]``. Every query's row sums to 1, so the scores of a segment sum to its
  length: 1 is an average patch, 3 a patch attended three times as much. Computed segment by segment
  in chunks of queries, so memory is linear in the number of patches (no T x T matrix).
* ``align/<modality>``: cross-modal alignment. The slide embedding of a mean-pooling encoder is the
  mean over patches of ``u_j = concat(feature_j, output token_j)`` (DESIGN §4) and the slide→X adapter
  is linear, so ``u_j`` read through the adapter is the patch's own position in the space the slide
  shares with X. The score is its cosine with the patient's X embedding projected into that space
  (``X`` = rna, snp, cnv, methylation, where the patient has it). A CLS-pooling encoder uses the
  output patch tokens instead.
* ``query/<index>``: cosine of every output patch token with that of one query patch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PathalignError
from ..io.embeddings import read_embeddings, slide_case_id
from ..io.heatmaps import SlideHeatmaps
from ..models.packing import PackedSlides
from ..models.pathalign_model import PathAlignModel
from ..models.slide_encoder import SlideEncoder

WSI = "wsi"


class HeatmapError(PathalignError, ValueError):
    """A heatmap that cannot be computed as asked (unknown block, no pair head, missing patient data)."""



def _to_input_order(packed: PackedSlides, packed_values: Tensor) -> np.ndarray:
    """Values ``[P]`` in packed order (one slide) -> ``[N]`` numpy in the input order."""
    out = np.empty(packed_values.shape[0], dtype=np.float32)
    out[packed.order[0]] = packed_values.detach().float().cpu().numpy()
    return out


def _check_block(encoder: SlideEncoder, block: int) -> None:
    if not 0 <= block < len(encoder.blocks):
        raise HeatmapError(f"block {block} does not exist: the encoder has blocks 0..{len(encoder.blocks) - 1}")


def attention_received(encoder: SlideEncoder, packed: PackedSlides, block: int, query_chunk: int = 1024) -> Tensor:
    """Attention each token receives in ``block``, head-averaged and summed over its segment's queries.

    Args:
        encoder: the slide encoder (eval mode).
        packed: one slide packed by ``encoder.pack``.
        block: block index (RoPE or NoPE).
        query_chunk: queries per step; memory is ``heads x query_chunk x segment length``.

    Returns:
        ``[T]`` over the whole packed sequence (prefix tokens included).
    """
    _check_block(encoder, block)
    blk = encoder.blocks[block]
    with torch.no_grad():
        x, rope, rope_segments = encoder.run_blocks(packed, stop=block)
        segments = rope_segments if blk.rope_block else packed.global_segments
        q, k, _ = blk.attn.qkv_rotated(blk.norm1(x), rope if blk.rope_block else None)  # [T,H,Dh]
        scale = q.shape[-1] ** -0.5
        received = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        start = 0
        for length in segments.lengths:
            ks = k[start:start + length].float()  # [L,H,Dh]
            acc = torch.zeros(length, dtype=torch.float32, device=x.device)
            for c in range(start, start + length, query_chunk):
                qs = q[c:min(c + query_chunk, start + length)].float()  # [c,H,Dh]
                attn = torch.softmax(torch.einsum("qhd,khd->hqk", qs, ks) * scale, dim=-1)  # [H,c,L]
                acc += attn.sum(dim=1).mean(dim=0)  # [L]
            received[start:start + length] = acc
            start += length
    return received


def patch_vectors(encoder: SlideEncoder, packed: PackedSlides) -> tuple[Tensor, Tensor]:
    """Each patch's counterpart of the slide embedding, and its output token.

    Returns:
        ``(u [P, output_dim], tokens [P, D])`` in packed order; for mean pooling ``u`` is
        ``concat(feature, output token)`` (its mean over patches is the slide embedding), for CLS
        pooling the output token itself.
    """
    with torch.no_grad():
        tokens = encoder.forward_packed(packed)["tokens"].float()  # [P, D]
    if encoder.config.pooling == "cls":
        return tokens, tokens
    return torch.cat([packed.features.float().to(tokens.device), tokens], dim=1), tokens


def alignment_scores(model: PathAlignModel, u: Tensor, modality: str, target: Tensor) -> Tensor:
    """Cosine ``[P]`` of each patch vector ``u`` ``[P, d_wsi]`` with one patient's ``modality`` embedding
    ``target`` ``[d_X]``, both in the space the slide shares with ``modality`` (the model's pair heads)."""
    try:
        return model.similarity(WSI, u, modality, target[None].to(u))[:, 0]
    except KeyError as e:
        raise HeatmapError(str(e).strip("'\"")) from None


def query_similarity(tokens: Tensor, query_packed: int) -> Tensor:
    """Cosine ``[P]`` of every output token with the token at packed position ``query_packed``."""
    t = F.normalize(tokens.float(), dim=-1)
    return t @ t[query_packed]


@torch.no_grad()
def patient_targets(embeddings_path: str | Path, slide_id: str, case_id: str | None) -> tuple[dict, str | None, list]:
    """The alignment targets of a slide: its patient's molecular embeddings in an ``embeddings.h5``.

    Args:
        embeddings_path: an ``embeddings.h5`` of ``pathalign embed`` with the heatmap's model.
        slide_id: the slide (its patient is looked up in the file's ``wsi`` group unless ``case_id`` is given).
        case_id: the slide's patient, when the file does not give it.

    Returns:
        ``({modality: [d] embedding}, case id, notes)``: a note for each modality the patient has no embedding of.

    Raises:
        HeatmapError: the slide is not in the file's ``wsi`` group and no ``case_id`` was given.
    """
    emb = read_embeddings(embeddings_path)
    notes = []
    if case_id is None:
        case_id = slide_case_id(emb, slide_id)
        if case_id is None:
            raise HeatmapError(f"{embeddings_path}: slide {slide_id!r} is not in its wsi group; give --case-id")
    targets = {}
    for modality, group in emb.items():
        if modality in ("wsi", "pairs", "_attrs") or "ids" not in group:
            continue
        ids = list(group["ids"])
        if case_id in ids:
            targets[modality] = group["embeddings"][ids.index(case_id)]
        else:
            notes.append(f"no align/{modality}: patient {case_id} has no {modality} embedding")
    return targets, case_id, notes


def compute_heatmaps(model: PathAlignModel, features_file: str | Path, blocks: list[int] | None = None,
                     targets: dict[str, np.ndarray] | None = None, queries: list[int] | None = None) -> SlideHeatmaps:
    """Every requested score of one slide.

    Args:
        model: a :class:`~pathalign.models.pathalign_model.PathAlignModel` with a slide encoder.
        features_file: the slide's features file (any layout :func:`read_patch_features` opens).
        blocks: attention blocks to score (default: every block).
        targets: modality -> the patient's embedding of that modality (e.g. from ``embeddings.h5``).
        queries: input indices of query patches.

    Returns:
        The slide's :class:`SlideHeatmaps`.
    """
    from ..io.features import read_patch_features
    from ..io.features_contract import file_contract

    encoder = model.slide_encoder
    if encoder is None:
        raise HeatmapError("this model has no slide encoder (trained without slides): there is nothing to map")
    model.eval()
    pf = read_patch_features(features_file)
    if len(pf.coords) == 0:
        raise HeatmapError(f"{features_file}: the slide has no patches")
    encoder_name = pf.attrs.get("encoder")
    model.check_patch_encoder(None if encoder_name is None else str(encoder_name), where=str(features_file))
    model.check_features_scale({Path(features_file).stem: file_contract(features_file)}, where=str(features_file))
    feats, coords, fragment = (torch.from_numpy(a) for a in pf.as_inputs())
    packed = encoder.pack([(feats, coords, fragment)], mpps=[pf.attrs.get("mpp")], names=[Path(features_file).stem])
    hm = SlideHeatmaps(Path(features_file).stem, pf.coords, pf.fragment, float(pf.attrs["patch_size_level0"]))
    patch_of_slot = packed.patch_slots.to(encoder.cls_token.device)
    blocks = list(range(len(encoder.blocks))) if blocks is None else list(blocks)
    for b in blocks:  # every block checked before any work
        _check_block(encoder, b)
    for b in blocks:
        kind = "rope" if encoder.blocks[b].rope_block else "nope"
        received = attention_received(encoder, packed, b)
        hm.scores[f"attention/block{b}_{kind}"] = _to_input_order(packed, received[patch_of_slot])
    u, tokens = patch_vectors(encoder, packed)
    for modality, emb in (targets or {}).items():
        hm.scores[f"align/{modality}"] = _to_input_order(packed, alignment_scores(model, u, modality,
                                                                                  torch.as_tensor(emb)))
    for q in queries or []:
        if not 0 <= q < len(pf.coords):
            raise HeatmapError(f"query patch {q} does not exist: the slide has patches 0..{len(pf.coords) - 1}")
        slot = int(np.flatnonzero(packed.order[0] == q)[0])
        hm.scores[f"query/{q}"] = _to_input_order(packed, query_similarity(tokens, slot))
    return hm
