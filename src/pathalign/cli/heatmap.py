"""``pathalign heatmap``: per-patch scores of a trained model on one slide, as HDF5, PNG and QuPath GeoJSON.

Writes, for a slide ``S``: ``S.heatmaps.h5`` (``coords``, ``fragment``, ``scores/...``), one
``S_<score>.png`` per score (over the thumbnail when ``--slide`` is given), and ``S.qupath.geojson``
(a tile per patch with the scores as measurements, the tissue fragments as annotations when
``--geojson`` is given) for QuPath's File > Import objects. The scores are defined in
:mod:`pathalign.evaluate.heatmap`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import LIST_SYNTAX, ListOption, device_option, include, out_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained model folder (RUN/model) or hf-hub: id")
    p.add_argument("--features", required=True, help="the slide's features file (<slide_id>.h5)")
    include(p, out_option("output folder"))
    p.add_argument("--slide", default=None, help="the slide file, to draw over its thumbnail (default: a blank canvas)")
    p.add_argument("--geojson", default=None,
                   help="the slide's tissue GeoJSON (pathalign segment / preprocess), exported as QuPath annotations")
    p.add_argument("--embeddings", default=None,
                   help="embeddings.h5 of the cohort (pathalign embed): the patient's molecular embeddings give the "
                        "align/<modality> scores (default: no alignment scores)")
    p.add_argument("--case-id", default=None,
                   help="the slide's patient in --embeddings (default: the case id the embeddings file gives the slide)")
    p.add_argument("--blocks", action=ListOption, item=int, default=None, metavar="BLOCK",
                   help=f"block indices for attention scores ({LIST_SYNTAX}; default: every block)")
    p.add_argument("--query", action=ListOption, item=int, default=None, metavar="PATCH",
                   help=f"patch indices ({LIST_SYNTAX}): similarity to each (default: none)")
    p.add_argument("--object-type", default="tile", choices=("tile", "detection"),
                   help="QuPath object type of the patches (default: tile)")
    include(p, device_option("cpu", "cpu, cuda, cuda:N or auto (default: cpu)"))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..devices import resolve_device
    from ..evaluate.heatmap import HeatmapError, compute_heatmaps, patient_targets
    from ..evaluate.heatmap_plot import plot_heatmap
    from ..io.heatmaps import write_heatmaps
    from ..io.qupath import fragment_annotations, patch_features, write_qupath_geojson
    from ..models.pathalign_model import load_model

    features = Path(args.features)
    slide_id = features.stem
    targets, notes = {}, []
    if args.embeddings:
        targets, case_id, notes = patient_targets(args.embeddings, slide_id, args.case_id)
    model = load_model(args.model).to(resolve_device(args.device))
    with torch.inference_mode():
        hm = compute_heatmaps(model, features, args.blocks, targets, args.query)
    hm.notes += notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_heatmaps(out / f"{slide_id}.heatmaps.h5", hm)
    for score in hm.scores:
        plot_heatmap(hm, score, out / f"{slide_id}_{score.replace('/', '_')}.png", args.slide)
    objects = patch_features(slide_id, hm.coords, hm.patch_size_level0, hm.scores, args.object_type, hm.fragment)
    if args.geojson:
        from ..io.tissue import read_geojson

        try:
            objects += fragment_annotations(slide_id, read_geojson(args.geojson))
        except (OSError, KeyError, ValueError) as e:
            raise HeatmapError(f"{args.geojson}: not a tissue GeoJSON written by pathalign ({e})") from None
    write_qupath_geojson(out / f"{slide_id}.qupath.geojson", objects)
    for note in hm.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{slide_id}: {len(hm.scores)} scores on {len(hm.coords)} patches -> {out}")
    return 0

