"""Slides in, ``features.h5`` out: segment → patch → extract, per slide, resumable, batch-safe.

Output folder layout::

    DIR/segmentation/<slide_id>.geojson   tissue fragments (level-0 px, holes as interior rings)
    DIR/segmentation/<slide_id>.png       thumbnail with fragment outlines and ids
    DIR/coords/<slide_id>.h5              coords + fragment (+ attrs)
    DIR/features_<encoder>/<slide_id>.h5  features + coords + fragment
    DIR/summary_<stage>.tsv               the last run's per-slide report (with the job that did each slide)
    DIR/locks/<slide_id>.lock|.done       a job's claim on a slide, then the record of who did it

A slide whose complete output exists is skipped; a partial one (no ``complete`` flag, or a
leftover temporary file) is redone. Every output records the settings that shaped it
(segmentation parameters; magnification, patch size and tissue threshold; encoder and feature
dtype) and an existing output is reused only if they equal this run's; otherwise the slide fails
with a message naming the differing settings (one folder holds one set of settings: use
another ``--out``, or delete the old outputs to recompute). A slide that fails is reported with
its reason and the batch goes on. Under ``torchrun`` the slides are sharded across ranks and
the summary is gathered on rank 0. Independent jobs (an array job, a resubmitted job) may share
one ``--out``: each slide is claimed before it is computed (``slides.locks``), so it is computed
once, and a claim left by a killed job is taken over.

Memory (per process) does not grow with the slide's area beyond its low-resolution mask:
about two bytes per pixel of the slide at ``seg_mpp`` (the saturation channel and one working
copy; 20 000 x 20 000 px = 0.8 GB for an 80 000-px slide at 0.5 µm/px and 2 µm/px), plus one
read tile (``SlideReader.max_read_px``, 4.2 Mpx: ~60 MB with its RGBA copies), one band of the
patch raster (``patch.BAND_CELLS``, ~64 MB), one inference batch, and the per-patch outputs
(coords, fragment ids, features: ~(24 + 2C) bytes per patch) — on top of the interpreter with
torch (~0.9 GB). ``benchmarks/slide_memory.py`` measures it.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..distributed import setup_distributed
from ..errors import PathalignError
from ..io.atomic import atomic_write_df
from ..io.features import is_complete, read_patch_features, write_patch_file
from ..io.tissue import TissueFileError, read_geojson, read_geojson_properties
from .extract import PatchDataset, extract_features
from .locks import SlideLocks
from .patch import PatchConfig, patch_slide
from .patch_encoders import PatchEncoder, PatchEncoderError, build_patch_encoder
from .reader import SlideError, is_dicom_folder, open_slide
from .segment import SegmentConfig, segment_slide, write_segmentation
from .slide_ids import slide_id_collisions

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
STAGES = ("segment", "patch", "extract")


@dataclass
class PipelineConfig:
    """Everything the slide pipeline needs; built once at the entry point."""

    out: Path
    stage: str = "extract"
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    encoder: str = "pathalign-stats"
    weights: str | None = None
    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    backend: str = "auto"
    mpp: float | None = None
    features_dtype: str = "float16"
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        if self.features_dtype not in ("float16", "float32"):
            raise ValueError("features_dtype must be float16 or float32")

    @property
    def features_dir(self) -> Path:
        return self.out / f"features_{self.encoder}"


def find_slides(inputs: list[str]) -> list[Path]:
    """Slide files from paths, folders (non-recursive) and glob patterns, de-duplicated, sorted."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if is_dicom_folder(p):  # one DICOM WSI: a folder of .dcm instances
            found.append(p)
        elif p.is_dir():
            found += [c for c in sorted(p.iterdir()) if c.suffix.lower() in SLIDE_SUFFIXES or is_dicom_folder(c)]
        elif any(ch in item for ch in "*?["):
            found += [Path(m) for m in sorted(glob.glob(item))]
        else:
            found.append(p)  # a missing file is reported per slide, not here
    seen, out = set(), []
    for p in found:
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def slide_id_of(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


class SettingsMismatch(PathalignError, ValueError):
    """An existing output was made with other settings than this run's; the message names them."""


def stage_settings(cfg: PipelineConfig, stage: str) -> dict:
    """The settings that shape the output of ``stage`` (and of the stages before it).

    Args:
        cfg: the run's configuration.
        stage: ``segment``, ``patch`` or ``extract``.

    Returns:
        A JSON-able dict, recorded in each output file and compared before an output is reused.
    """
    out = {"segmenter": asdict(cfg.segment)}
    if stage in ("patch", "extract"):
        out.update(magnification=cfg.patch.magnification, patch_size=cfg.patch.patch_size,
                   tissue_threshold=cfg.patch.tissue_threshold, scale=cfg.patch.scale)
    if stage == "extract":
        out.update(encoder=cfg.encoder, features_dtype=cfg.features_dtype)
    return out


def _recorded_settings(attrs: dict) -> dict:
    """Settings recorded in a coords/features file; older or other tools' files give what their attrs say."""
    if "settings" in attrs:
        try:
            return json.loads(attrs["settings"])
        except (TypeError, ValueError):
            return {}
    legacy = {"magnification": attrs.get("target_magnification"), "patch_size": attrs.get("patch_size"),
              "encoder": attrs.get("encoder")}
    return {k: v for k, v in legacy.items() if v is not None}


def check_settings(path: Path, recorded: dict, wanted: dict) -> None:
    """Raise SettingsMismatch when a setting recorded in ``path`` differs from this run's (unrecorded ones pass)."""
    diffs = []
    for key, want in wanted.items():
        if key not in recorded:
            continue
        have = recorded[key]
        if isinstance(want, dict) and isinstance(have, dict):
            diffs += [f"{key}.{k} {have.get(k)!r} (this run {v!r})" for k, v in want.items()
                      if k in have and have[k] != v]
        elif have != want:
            diffs.append(f"{key} {have!r} (this run {want!r})")
    if diffs:
        raise SettingsMismatch(f"{path}: made with other settings: {'; '.join(diffs)}. One output folder holds one "
                               "set of settings: use another --out, or delete the old outputs to recompute")


def _segment(path: Path, cfg: PipelineConfig, slide) -> list:
    gj = cfg.out / "segmentation" / f"{slide_id_of(path)}.geojson"
    if gj.is_file() and (cfg.out / "segmentation" / f"{slide_id_of(path)}.png").is_file():
        _check_geojson(gj, cfg)
        return read_geojson(gj)
    seg = segment_slide(slide, cfg.segment)
    write_segmentation(seg, slide, cfg.out / "segmentation", slide_id_of(path))
    return seg.fragments


def _check_geojson(gj: Path, cfg: PipelineConfig) -> None:
    try:
        recorded = read_geojson_properties(gj).get("segmenter")
    except TissueFileError:
        return  # unreadable: read_geojson names the problem
    if isinstance(recorded, dict):
        check_settings(gj, {"segmenter": recorded}, stage_settings(cfg, "segment"))


def process_slide(path: Path, cfg: PipelineConfig, encoder: PatchEncoder | None = None) -> dict:
    """Run the configured stages on one slide; returns its summary row (never raises for bad slides)."""
    sid = slide_id_of(path)
    row = {"slide_id": sid, "path": str(path), "status": "done", "reason": "", "patches": 0, "fragments": 0,
           "seconds": 0.0}
    t0 = time.perf_counter()
    coords_path = cfg.out / "coords" / f"{sid}.h5"
    feats_path = cfg.features_dir / f"{sid}.h5"
    final = {"segment": cfg.out / "segmentation" / f"{sid}.geojson", "patch": coords_path, "extract": feats_path}[cfg.stage]
    try:
        if (cfg.stage == "segment" and final.is_file()) or (cfg.stage != "segment" and is_complete(final)):
            if cfg.stage == "segment":
                _check_geojson(final, cfg)
            else:
                pf = read_patch_features(final)
                check_settings(final, _recorded_settings(pf.attrs), stage_settings(cfg, cfg.stage))
                row.update(patches=len(pf), fragments=len(np.unique(pf.fragment)))
            row.update(status="skipped", reason="complete output exists")
            return row
        with open_slide(path, cfg.backend, cfg.mpp) as slide:
            fragments = _segment(path, cfg, slide)
            row["fragments"] = len(fragments)
            if cfg.stage == "segment":
                return row
            if is_complete(coords_path):
                pf = read_patch_features(coords_path)
                check_settings(coords_path, _recorded_settings(pf.attrs), stage_settings(cfg, "patch"))
                coords, frag, attrs = pf.coords, pf.fragment, pf.attrs
            else:
                grid = patch_slide(slide, fragments, cfg.patch)
                coords, frag, attrs = grid.coords, grid.fragment, grid.attrs
                write_patch_file(coords_path, coords, frag, attrs, file_attrs={
                    "slide": str(path), "settings": json.dumps(stage_settings(cfg, "patch"))})
            row["patches"] = int(len(coords))
            row["fragments"] = int(len(np.unique(frag)))
            if len(coords) == 0:
                row.update(status="no tissue", reason="zero patches (no tissue found at this threshold)")
                if cfg.stage == "extract":  # record an empty, complete features file so reruns skip it
                    write_patch_file(feats_path, coords, frag, _coord_attrs(attrs),
                                     np.zeros((0, encoder.dim), cfg.features_dtype), _feature_attrs(cfg, path))
                return row
            if cfg.stage == "patch":
                return row
        ds = PatchDataset(path, coords, int(attrs["read_level"]), int(attrs["read_size"]), int(attrs["patch_size"]),
                          cfg.backend, cfg.mpp)
        feats = extract_features(encoder, ds, cfg.batch_size, cfg.workers, cfg.device,
                                 np.float16 if cfg.features_dtype == "float16" else np.float32, cfg.progress, sid)
        write_patch_file(feats_path, coords, frag, _coord_attrs(attrs), feats, _feature_attrs(cfg, path))
    except (SlideError, OSError, ValueError) as e:
        row.update(status="failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad slide must not stop ten thousand
        row.update(status="failed", reason=f"{type(e).__name__}: {e}")
        if os.environ.get("PATHALIGN_DEBUG"):
            traceback.print_exc()
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _refused_row(path: Path, reason: str) -> dict:
    """The summary row of a slide refused before any work."""
    return {"slide_id": slide_id_of(path), "path": str(path), "status": "failed", "reason": reason, "patches": 0,
            "fragments": 0, "seconds": 0.0}


def _coord_attrs(attrs: dict) -> dict:
    """The coords attributes of DESIGN §3 (not the file attributes a reused coords file merged in)."""
    return {k: v for k, v in attrs.items() if k not in ("slide", "settings", "complete", "encoder")}


def _feature_attrs(cfg: PipelineConfig, path: Path) -> dict:
    return {"encoder": cfg.encoder, "slide": str(path), "settings": json.dumps(stage_settings(cfg, "extract"))}


def process_claimed(path: Path, cfg: PipelineConfig, encoder: PatchEncoder | None, locks: SlideLocks) -> dict:
    """``process_slide`` under this job's claim on the slide (``slides.locks``), its row with the ``job`` that did it.

    A slide another live job holds is not computed: its row says ``locked`` and names that job. A
    slide whose output was complete names the job recorded as having made it.
    """
    sid = slide_id_of(path)
    final = {"segment": cfg.out / "segmentation" / f"{sid}.geojson", "patch": cfg.out / "coords" / f"{sid}.h5",
             "extract": cfg.features_dir / f"{sid}.h5"}[cfg.stage]
    if final.is_file() if cfg.stage == "segment" else is_complete(final):  # nothing to compute: no claim needed
        return {**process_slide(path, cfg, encoder), "job": locks.done_by(sid)}
    try:
        holder = locks.claim(sid)
    except OSError as e:
        return {"slide_id": sid, "path": str(path), "status": "failed", "reason": f"cannot claim the slide ({e})",
                "patches": 0, "fragments": 0, "seconds": 0.0, "job": locks.job}
    if holder is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since))
        return {"slide_id": sid, "path": str(path), "status": "locked", "patches": 0, "fragments": 0, "seconds": 0.0,
                "reason": f"being processed by job {holder.job} since {since}", "job": holder.job}
    row = None
    try:
        row = process_slide(path, cfg, encoder)
    finally:
        computed = row is not None and row["status"] not in ("skipped", "failed")
        locks.release(sid, done=computed)
    row["job"] = locks.job if row["status"] != "skipped" else locks.done_by(sid)
    return row


def run_pipeline(slides: list[Path], cfg: PipelineConfig) -> pd.DataFrame:
    """Process ``slides`` (sharded across torchrun ranks); returns the summary (complete on rank 0)."""
    info = setup_distributed(cfg.device)
    rank, world = info.rank, info.world_size
    if str(info.device) != cfg.device:
        cfg = dataclasses.replace(cfg, device=str(info.device))
    encoder = None
    if cfg.stage == "extract":
        encoder = build_patch_encoder(cfg.encoder, cfg.weights, cfg.device)
    collided = slide_id_collisions(slides, slide_id_of)  # refused before any work, the batch goes on
    mine = [p for p in slides if p not in collided][rank::world]
    rows = [_refused_row(p, why) for p, why in collided.items()] if rank == 0 else []
    locks = SlideLocks(cfg.out)
    bar = tqdm(mine, desc=f"slides (rank {rank})" if world > 1 else "slides", disable=not cfg.progress, unit="slide")
    try:
        for path in bar:
            bar.set_postfix_str(path.name[:40])
            rows.append(process_claimed(path, cfg, encoder, locks))
        for i, row in enumerate(rows):  # slides another job held: finished by now, or left by a dead job
            if row["status"] == "locked":
                rows[i] = process_claimed(Path(row["path"]), cfg, encoder, locks)
    finally:
        locks.close()
    if world > 1:
        import torch.distributed as dist

        gathered = [None] * world if rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if rank == 0:
            rows = [r for part in gathered for r in part]
    summary = pd.DataFrame(rows, columns=["slide_id", "path", "status", "reason", "patches", "fragments", "seconds",
                                          "job"])
    if rank == 0:
        try:  # a full disk must not lose the per-slide report: it is still returned (and printed by the CLI)
            cfg.out.mkdir(parents=True, exist_ok=True)
            atomic_write_df(summary, cfg.out / f"summary_{cfg.stage}.tsv")
        except OSError as e:
            print(f"warning: cannot write {cfg.out / f'summary_{cfg.stage}.tsv'} ({e})", file=sys.stderr)
    return summary


def format_summary(summary: pd.DataFrame) -> str:
    """Human-readable summary: counts, then one line per slide that was not simply done."""
    counts = summary.status.value_counts().to_dict()
    head = (f"{len(summary)} slides: " + ", ".join(f"{v} {k}" for k, v in counts.items()) +
            f"; {int(summary.patches.sum())} patches, {int(summary.fragments.sum())} fragments, "
            f"{summary.seconds.sum():.1f} s")
    lines = [head, "", "| slide | status | patches | fragments | seconds | job | reason |", "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.slide_id} | {r.status} | {r.patches} | {r.fragments} | {r.seconds:.1f} | "
                     f"{getattr(r, 'job', '') or ''} | {r.reason[:120]} |")
    return "\n".join(lines)


def validate_encoder(name: str) -> None:
    """Fail early, before any slide, on an unknown encoder name."""
    from .patch_encoders import PATCH_ENCODERS

    if name not in PATCH_ENCODERS:
        raise PatchEncoderError(f"unknown patch encoder {name!r}; known: {', '.join(PATCH_ENCODERS.names())}")
