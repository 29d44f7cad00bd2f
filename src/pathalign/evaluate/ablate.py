"""``pathalign ablate``: the paper's ablations, trained and benched with one seed set in one table.

Variants: the full model; no RoPE (every block NoPE); RoPE without the fragment mask; the fragment
mask without RoPE; a single-pair loss (WSI↔RNA only); and each molecular modality left out of
training in turn. The mean pooling of patch features is benched beside them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..modalities import MOLECULAR
from ..models.pathalign_model import load_preset


def variants(preset: str, modalities: list[str]) -> dict[str, dict]:
    """Training overrides per ablation (``model_overrides`` and ``modalities``)."""
    enc = dict(load_preset(preset).get("slide_encoder", {}))
    out = {
        "full": {},
        "no-rope": {"model_overrides": {"slide_encoder": {**enc, "nope_interval": 0}}},
        "rope-no-fragment-mask": {"model_overrides": {"slide_encoder": {**enc, "fragment_mask": False}}},
        "fragment-mask-no-rope": {"model_overrides": {"slide_encoder": {**enc, "use_rope": False}}},
        "single-pair-wsi-rna": {"model_overrides": {"pairs": [["wsi", "rna"]]}},
    }
    for m in MOLECULAR:
        if m in modalities and len(modalities) > 2:
            out[f"without-{m}"] = {"modalities": [x for x in modalities if x != m]}
    return out


def run_ablations(cohort, out, preset: str = "tiny", steps: int = 300, seed: int = 0, rna_fm: str | None = None,
                  bench: bool = True, only: list[str] | None = None, progress: bool = True) -> dict:
    """Train (and embed) every variant under ``out/<variant>``; bench them with mean pooling when ``bench``."""
    from ..cohort import load_cohort
    from .embed import embed_mean_pool, embed_with_model
    from ..train.trainer import TrainConfig, Trainer
    from .bench import run_bench
    from .tasks import derive_tasks

    out = Path(out)
    c = load_cohort(cohort)
    modalities = c.modalities
    models = {}
    for name, over in variants(preset, modalities).items():
        if only and name not in only:
            continue
        run = out / name
        emb = run / "embeddings.h5"
        if not emb.is_file():
            if progress:
                print(f"ablate: training {name}", flush=True)
            cfg = TrainConfig.from_preset(preset, steps=steps, seed=seed, progress=False,
                                          rna_fm=rna_fm if "rna" in over.get("modalities", modalities) else None,
                                          modalities=over.get("modalities"), model_overrides=over.get("model_overrides", {}))
            Trainer(cohort, run, cfg).fit()
            embed_with_model(run / "model", cohort, emb, progress=False)
        models[name] = str(emb)
    if not bench:
        return models
    mean_pool = out / "mean_pool.h5"
    if not mean_pool.is_file():
        embed_mean_pool(c.meta["slides_dir"], mean_pool, cohort)
    models["mean-pooling"] = str(mean_pool)
    return run_bench(models, derive_tasks(c.manifest, seed=seed), out, c.manifest, seed, progress=progress)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cohort", required=True, help="cohort folder with slide features")
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rna-fm", default=None, help="pretrained RNA foundation model folder")
    p.add_argument("--only", default=None, help="comma-separated variant names")


def run(args) -> int:
    run_ablations(args.cohort, args.out, args.preset, args.steps, args.seed, args.rna_fm,
                  only=args.only.split(",") if args.only else None)
    print((Path(args.out) / "results.md").read_text().split("## All metrics")[0])
    return 0
