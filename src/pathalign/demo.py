"""``pathalign demo``: the whole life cycle on the embedded synthetic cohort.

synth → preprocess (built-in patch encoder) → cohort build → pretrain-rna → train (tiny preset)
→ embed → bench against mean pooling, with a Markdown report and plots in ``--out``
(default ``demo_output/``). Every stage leaves a marker when it finishes, so re-running reuses
finished stages; ``--fresh`` starts over.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PathalignError

if TYPE_CHECKING:
    import pandas as pd

    from .slides.pipeline import PipelineConfig


class DemoError(PathalignError):
    """Demo settings it cannot run with (too few patients, no training steps)."""


@dataclass
class DemoConfig:
    out: Path = Path("demo_output")
    patients: int = 200
    slide_size: int = 2048
    patch_size: int = 128
    genes: int = 1000
    steps: int = 300
    rna_steps: int = 600
    seed: int = 0
    ablations: bool = False
    folds: int = 5
    device: str = "cpu"  # a resolved device (pathalign.devices.resolve_device)


def _stage(cfg: DemoConfig, name: str, fn, log: list) -> None:
    marker = cfg.out / ".stages" / f"{name}.done"
    t0 = time.perf_counter()
    if marker.is_file():
        print(f"[demo] {name:<12} reused ({marker.read_text().strip()})", flush=True)
        log.append((name, "reused", 0.0))
        return
    print(f"[demo] {name:<12} running ...", flush=True)
    info = fn() or ""
    dt = time.perf_counter() - t0
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{info} {dt:.0f} s".strip())
    print(f"[demo] {name:<12} done in {dt:.1f} s {info}", flush=True)
    log.append((name, "done", dt))


def check_demo_config(cfg: DemoConfig, batch_size: int, val_fraction: float, groups: int) -> None:
    """Raise :class:`DemoError` naming the option when the demo cannot run to the end with ``cfg``.

    Training takes batches of ``batch_size`` patients from the training split, which holds
    ``1 - val_fraction`` of each of ``groups`` strata (each rounded): so at least
    ``ceil((batch_size + groups / 2) / (1 - val_fraction))`` patients.
    """
    for option, value in (("--steps", cfg.steps), ("--genes", cfg.genes), ("--patch-size", cfg.patch_size),
                          ("--slide-size", cfg.slide_size)):
        if value < 1:
            raise DemoError(f"{option} {value}: must be at least 1")
    need = math.ceil((batch_size + groups / 2) / (1 - val_fraction))
    if cfg.patients < need:
        raise DemoError(f"--patients {cfg.patients}: the demo needs at least {need} (it trains on batches of "
                        f"{batch_size} patients from the {1 - val_fraction:.0%} training split)")


def run_demo(cfg: DemoConfig, fresh: bool = False) -> dict:
    """Run (or resume) the demo; returns the benchmark results.

    Raises:
        DemoError: settings the demo cannot finish with; raised before anything is written.
    """
    from .cohort import CohortSources, build_cohort
    from .evaluate.embed import embed_mean_pool, embed_with_model
    from .evaluate.bench import run_bench
    from .evaluate.tasks import derive_tasks
    from .train.rna_pretrain import pretrain_rna
    from .slides.patch import PatchConfig
    from .slides.pipeline import PipelineConfig, find_slides, run_pipeline
    from .slides.segment import SegmentConfig
    from .synth import SynthConfig, generate_cohort
    from .synth.state import CANCER_TYPES
    from .train.trainer import TrainConfig, Trainer

    tiny = TrainConfig.from_preset("tiny")
    check_demo_config(cfg, tiny.batch_size, tiny.val_fraction, len(CANCER_TYPES))
    out = cfg.out
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    syn, slides_out, cohort, fm, run = out / "synth", out / "slides", out / "cohort", out / "rna_fm", out / "run"
    log: list = []
    t_start = time.perf_counter()
    min_um2 = 10_000 if cfg.slide_size >= 2048 else 2_000  # small demo slides have small fragments
    pipe = PipelineConfig(out=slides_out, progress=False, patch=PatchConfig(patch_size=cfg.patch_size), device=cfg.device,
                          segment=SegmentConfig(min_fragment_um2=min_um2))

    _stage(cfg, "synth", lambda: generate_cohort(syn, SynthConfig(patients=cfg.patients, seed=cfg.seed,
                                                                  slide_size=cfg.slide_size, genes=cfg.genes),
                                                 progress=False) is not None and f"{cfg.patients} patients", log)

    def preprocess():
        s = run_pipeline(find_slides([str(syn / "slides")]), pipe)
        return f"{(s.status != 'failed').sum()} slides, {int(s.patches.sum())} patches"

    _stage(cfg, "preprocess", preprocess, log)
    _stage(cfg, "cohort", lambda: build_cohort(CohortSources(
        clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"), features=str(pipe.features_dir),
        rna=str(syn / "rna_tpm.tsv.gz"), maf=[str(syn / "mutations.maf")], cnv=str(syn / "cnv_gistic.tsv"),
        methylation=str(syn / "methylation_beta.tsv.gz")), cohort, progress=False) and "", log)
    _stage(cfg, "pretrain-rna", lambda: "masked MSE ratio {:.2f}".format(pretrain_rna(
        cohort, fm, n_genes=cfg.genes, dim=32, steps=cfg.rna_steps, seed=cfg.seed, progress=False,
        device=cfg.device)["ratio"]), log)
    train_cfg = TrainConfig.from_preset("tiny", steps=cfg.steps, seed=cfg.seed, rna_fm=str(fm), progress=False,
                                        device=cfg.device)
    _stage(cfg, "train", lambda: "data wait {:.0%}".format(Trainer(cohort, run, train_cfg).fit()["data_wait_fraction"]), log)

    def embed():
        embed_with_model(run / "model", cohort, out / "embeddings.h5", progress=False, name="pathalign-tiny",
                         device=cfg.device)
        embed_mean_pool(pipe.features_dir, out / "mean_pool.h5", cohort)

    _stage(cfg, "embed", embed, log)
    models = {"pathalign (aligned)": out / "embeddings.h5", "mean pooling": out / "mean_pool.h5"}
    if cfg.ablations:
        from .evaluate.ablate import run_ablations

        _stage(cfg, "ablations", lambda: run_ablations(cohort, out / "ablations", steps=cfg.steps, seed=cfg.seed,
                                                       rna_fm=str(fm), bench=False, device=cfg.device) and "", log)
        seed_dir = out / "ablations" / f"seed_{cfg.seed}"
        models.update({f"ablation: {p.parent.name}": p for p in sorted(seed_dir.glob("*/embeddings.h5"))
                       if p.parent.name != "full"})
    from .cohort import load_cohort

    manifest = load_cohort(cohort).manifest

    def bench():
        run_bench({k: str(v) for k, v in models.items()}, derive_tasks(manifest, cfg.folds, cfg.seed), out / "bench",
                  manifest, cfg.seed, progress=False)

    _stage(cfg, "bench", bench, log)
    results = json.loads((out / "bench" / "results.json").read_text())
    _stage(cfg, "report", lambda: write_report(cfg, results, manifest, pipe, run) and "", log)
    total = time.perf_counter() - t_start
    print((out / "bench" / "results.md").read_text().split("## All metrics")[0])
    print(f"[demo] finished in {total:.0f} s; report: {out / 'report.md'}")
    return results


def write_report(cfg: DemoConfig, results: dict, manifest: pd.DataFrame, pipe: PipelineConfig, run: Path) -> bool:
    """``report.md`` with the results table and the plots (t-SNE, attention, loss curves, metrics)."""
    from .io.embeddings import read_embeddings
    from .evaluate.attention_plot import plot_attention
    from .evaluate.plots import plot_embedding_map
    from .models.pathalign_model import load_model

    out = cfg.out
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    ctype = dict(zip(manifest.case_id, manifest.cancer_type))
    for name, path in (("aligned", out / "embeddings.h5"), ("mean_pool", out / "mean_pool.h5")):
        e = read_embeddings(path)["wsi"]
        labels = [ctype.get(c, "?") for c in e["case_ids"]]
        plot_embedding_map(e["embeddings"], labels, figs / f"tsne_{name}.png", f"t-SNE of slide embeddings ({name})")
    shutil.copy(run / "loss_curves.png", figs / "loss_curves.png")
    shutil.copy(out / "bench" / "probe_metrics.png", figs / "probe_metrics.png")
    model = load_model(run / "model")
    first = next(s for sids in manifest.slide_ids for s in sids if (pipe.features_dir / f"{s}.h5").is_file())
    attn = plot_attention(out / "synth" / "slides" / f"{first}.tiff", pipe.out / "segmentation" / f"{first}.geojson",
                          pipe.features_dir / f"{first}.h5", model.slide_encoder, figs / "attention.png")
    thumb = pipe.out / "segmentation" / f"{first}.png"
    shutil.copy(thumb, figs / "segmentation.png")
    table = (out / "bench" / "results.md").read_text().split("## All metrics")[0].replace("# Benchmark results", "").strip()
    text = f"""# pathalign demo report

Synthetic cohort: {cfg.patients} patients, {int(manifest.has_wsi.sum())} with slides; tiny preset, {cfg.steps} steps.
Cross-modal retrieval is measured on held-out patients (never seen in training).

The cohort is built to be hard in known ways (mechanisms and truth: `synth/truth.md`): `tumour_side` is
a spatial arrangement inside the fragments (some fragments disagree); `genomic_instability` is carried by
mutations, copy number, methylation and the arrangement of tumour subclones on the slide, but not by RNA;
methylation is measured for ~30 % of patients and only ~7 % have every modality.

{table}

## Figures

Tissue segmentation (fragment outlines and ids): ![segmentation](figures/segmentation.png)

Attention of the first RoPE block from one patch (it stays inside its fragment; attention outside:
{attn['attention_outside_fragment']:.1e}): ![attention](figures/attention.png)

Training loss per pair and learned temperatures: ![loss](figures/loss_curves.png)

Probe and retrieval metrics per task and model: ![metrics](figures/probe_metrics.png)

Slide embeddings coloured by cancer type, aligned vs mean pooling:
![aligned](figures/tsne_aligned.png) ![mean pooling](figures/tsne_mean_pool.png)
"""
    (out / "report.md").write_text(text)
    return True
