"""``pathalign ablate``: the method with one part changed at a time, over several seeds, in one table.

Arms (``--only`` picks some; ``full`` is always trained, it is what the others are compared with):

* ``full`` — the method as configured;
* position: ``no-rope`` (every block NoPE), ``rope-no-fragment-mask``, ``fragment-mask-no-rope``;
* loss: ``single-pair-wsi-rna`` (WSI↔RNA only), ``shared-projection`` (no pair adapters: one space for
  every pair, each modality's encoder being its only projection; ``embed_dim`` is set to the slide
  embedding's dim so that the identity fits);
* data: ``complete-case`` (training restricted to patients with every modality), ``without-<m>``
  (modality ``m`` left out of training), ``train-missing-0.25/0.5/0.75`` (that fraction of the training
  patients' molecular data hidden, per modality, seeded and patient-level: the training-time
  missingness curve, with ``full`` as rate 0, drawn in ``training_missing.png``);
* ``random-slide-encoder`` — the slide encoder frozen at its random initialisation (molecular encoders
  and pair heads trained as usual);
* ``mean-pooling`` — the mean of each slide's patch features (no training).

Each trained arm runs once per seed (``--seeds 0,1,2``): the seed sets the training seed, the held-out
patients and the benchmark folds, identically for every arm, so arms are compared *paired by seed*.
Per metric the table gives the mean over seeds ± the half-width of its 95 % t-interval
(``t_{n-1, 0.975} · sd / √n``), and for every arm the paired difference to ``full`` (per-seed
differences, same t-interval). Outputs: ``<out>/seed_<s>/<arm>/`` (runs), ``<out>/seed_<s>/results.*``
(the bench of that seed), ``<out>/ablation.json``, ``<out>/ablation.md`` and, with the ``train-missing``
arms, ``<out>/training_missing.{csv,png}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PathalignError
from ..io.atomic import atomic_path, atomic_write_df, atomic_write_json, atomic_write_text
from ..modalities import MOLECULAR
from ..models.pathalign_model import load_preset
from .stats import mean_ci, paired_difference

if TYPE_CHECKING:
    import pandas as pd

BASELINE = "mean-pooling"
PRIMARY = {"classification": "balanced_accuracy", "survival": "c_index"}


TRAIN_MISSING_RATES = (0.25, 0.5, 0.75)
"""Training-time missing rates of the ``train-missing-<r>`` arms (the curve's rate 0 is ``full``)."""


def missing_arm(rate: float) -> str:
    """The arm name for training-time missing rate ``rate`` (``train-missing-0.25``)."""
    return f"train-missing-{rate:g}"


class AblationError(PathalignError, ValueError):
    """An unusable ablation request (unknown arm, cohort too small, bad option); the message names it."""


@dataclass
class Arm:
    """What one arm changes: training overrides, modalities, training patients, frozen parts."""

    model_overrides: dict = field(default_factory=dict)
    modalities: list[str] | None = None
    complete_cases: bool = False
    freeze_slide_encoder: bool = False
    trained: bool = True
    train_missing_rate: float = 0.0  # training-time missingness (TrainConfig.train_missing_rate)


def arms(preset: str, modalities: list[str], wsi_dim: int | None = None) -> dict[str, Arm]:
    """Every arm for this preset and cohort (``wsi_dim``: the slide embedding's dim, for ``shared-projection``)."""
    enc = dict(load_preset(preset).get("slide_encoder", {}))
    out = {
        "full": Arm(),
        "no-rope": Arm({"slide_encoder": {**enc, "nope_interval": 0}}),
        "rope-no-fragment-mask": Arm({"slide_encoder": {**enc, "fragment_mask": False}}),
        "fragment-mask-no-rope": Arm({"slide_encoder": {**enc, "use_rope": False}}),
        "single-pair-wsi-rna": Arm({"pairs": [["wsi", "rna"]]}),
        "shared-projection": Arm({"pair_adapters": False, **({"embed_dim": wsi_dim} if wsi_dim else {})}),
        "complete-case": Arm(complete_cases=True),
        "random-slide-encoder": Arm(freeze_slide_encoder=True),
    }
    if len(modalities) > 1:  # training-time missingness curve: `full` is its rate 0
        out.update({missing_arm(r): Arm(train_missing_rate=r) for r in TRAIN_MISSING_RATES})
    for m in MOLECULAR:
        if m in modalities and len(modalities) > 2:
            out[f"without-{m}"] = Arm(modalities=[x for x in modalities if x != m])
    out[BASELINE] = Arm(trained=False)
    return out


def select_arms(available: dict[str, Arm], only: list[str] | None) -> list[str]:
    """The arms to run: ``only`` (plus ``full``) or all; an unknown name is an error listing the known ones."""
    if not only:
        return list(available)
    unknown = [n for n in only if n not in available]
    if unknown:
        raise AblationError(f"--only: unknown arm(s) {', '.join(map(repr, unknown))}; known: {', '.join(available)}")
    return ["full"] + [n for n in available if n in only and n != "full"]


# ---------------------------------------------------------------------------------------------- statistics
def seed_metrics(results: dict) -> dict[str, dict[str, float]]:
    """Per model: ``{"<task> <metric>": value}`` (primary metric, mean over folds) and cross-modal recall@5."""
    out: dict[str, dict[str, float]] = {}
    for model, res in results["models"].items():
        row = {}
        for task, r in res.get("tasks", {}).items():
            metric = PRIMARY[results["tasks"][task]["type"]]
            if isinstance(r.get(metric), dict):
                row[f"{task} {metric}"] = r[metric]["mean"]
        for pair, r in res.get("cross_modal", {}).items():
            if "recall@5" in r:
                row[f"{pair} recall@5"] = r["recall@5"]
                row[f"{pair} chance@5"] = r["chance@5"]
        out[model] = row
    return out


def aggregate(per_seed: dict[int, dict[str, dict[str, float]]], reference: str = "full", level: float = 0.95) -> dict:
    """Mean ± CI per arm and metric over seeds, and paired differences to ``reference``."""
    arm_names = list(dict.fromkeys(a for s in per_seed.values() for a in s))
    metrics = list(dict.fromkeys(k for s in per_seed.values() for a in s.values() for k in a))
    table: dict = {"arms": arm_names, "metrics": metrics, "seeds": sorted(per_seed), "values": {}, "differences": {}}
    for a in arm_names:
        table["values"][a], table["differences"][a] = {}, {}
        for m in metrics:
            by_seed = {s: per_seed[s].get(a, {}).get(m) for s in per_seed}
            by_seed = {s: v for s, v in by_seed.items() if v is not None}
            if not by_seed:
                continue
            table["values"][a][m] = mean_ci(by_seed.values(), level)
            ref = {s: per_seed[s].get(reference, {}).get(m) for s in per_seed}
            ref = {s: v for s, v in ref.items() if v is not None}
            if a != reference and ref:
                table["differences"][a][m] = paired_difference(by_seed, ref, level)
    return table


def _cell(d: dict | None, diff: bool = False) -> str:
    if not d or d["n"] == 0:
        return "—"
    if d["n"] < 2:
        return f"{d['mean']:+.3f}" if diff else f"{d['mean']:.3f}"
    if diff:
        return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" + (" *" if d["excludes_zero"] else "")
    return f"{d['mean']:.3f} ± {d['half_width']:.3f}"


def render_table(table: dict, reference: str = "full") -> str:
    """Markdown: values (mean ± 95 % CI half-width) and paired differences to ``reference`` (mean [95 % CI])."""
    arms_, metrics = table["arms"], [m for m in table["metrics"] if not m.endswith("chance@5")]
    n = len(table["seeds"])
    head = "| metric | " + " | ".join(arms_) + " |\n|---|" + "---|" * len(arms_)
    lines = [f"Seeds {', '.join(map(str, table['seeds']))} (n = {n}). Mean over seeds ± half-width of the 95 % "
             "t-interval of the mean (t with n-1 degrees of freedom).", "", head]
    for m in metrics:
        cells = [_cell(table["values"][a].get(m)) for a in arms_]
        chance = m.replace("recall@5", "chance@5")
        if chance != m and table["values"].get(reference, {}).get(chance):
            m = f"{m} (chance {table['values'][reference][chance]['mean']:.2f})"
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    others = [a for a in arms_ if a != reference]
    lines += ["", f"Paired difference to `{reference}` (arm − {reference}, per seed, then mean [95 % t-interval]; "
                  "`*`: the interval excludes 0).", "",
              "| metric | " + " | ".join(others) + " |\n|---|" + "---|" * len(others)]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(_cell(table["differences"][a].get(m), diff=True) for a in others) + " |")
    return "\n".join(lines) + "\n"


def training_missing_curve(per_seed: dict[int, dict[str, dict[str, float]]],
                           reference: str = "full") -> pd.DataFrame | None:
    """The training-time missingness curve as the long table of :func:`pathalign.evaluate.missing.summarise`:
    every metric of ``reference`` (rate 0) and the ``train-missing-<r>`` arms per seed; None without those arms."""
    import pandas as pd

    by_rate = {0.0: reference, **{r: missing_arm(r) for r in TRAIN_MISSING_RATES}}
    rows = []
    for s, models in per_seed.items():
        if not any(missing_arm(r) in models for r in TRAIN_MISSING_RATES):
            continue
        for rate, arm in by_rate.items():
            for key, value in models.get(arm, {}).items():
                name, metric = key.rsplit(" ", 1)
                if metric.startswith("chance@"):
                    continue
                retrieval = metric.startswith("recall@")
                chance = models[arm].get(f"{name} {metric.replace('recall@', 'chance@')}") if retrieval else None
                rows.append({"kind": "retrieval" if retrieval else "task", "name": name, "metric": metric,
                             "hidden": "training", "rate": rate, "seed": s, "value": value, "chance": chance})
    return pd.DataFrame(rows) if rows else None


def write_training_missing(per_seed: dict, out: Path) -> dict | None:
    """``training_missing.csv`` (mean and 95 % t-interval per metric and rate) and ``training_missing.png``
    (one panel per task / pair) in ``out``; returns the summary records, or None. Whether a drop is real is
    read from the paired differences of the ``train-missing`` arms to ``full`` in the main table."""
    from .missing import plot_curves, summarise

    long = training_missing_curve(per_seed)
    if long is None:
        return None
    summary = summarise(long)
    atomic_write_df(summary, out / "training_missing.csv")
    with atomic_path(out / "training_missing.png", keep_suffix=True) as tmp:
        plot_curves(summary, tmp, xlabel="missing rate in training")
    return {"summary": summary.to_dict("records")}


# ---------------------------------------------------------------------------------------------- runs
def _train_patients(manifest, modalities: list[str], cfg, complete: bool) -> int:
    """How many training patients an arm has (the trainer's own split and hiding; ≥ 2 modalities, or all
    when ``complete``)."""
    from ..hiding import hidden_in_training
    from ..train.data import split_patients

    train = set(split_patients(manifest, cfg.val_fraction, cfg.seed, cfg.stratify)["train"])
    hidden = hidden_in_training(manifest, train, modalities, cfg.train_missing_rate, cfg.seed)
    has = np.stack([manifest[f"has_{m}"].to_numpy(bool) & ~manifest.case_id.isin(hidden.get(m, ())).to_numpy()
                    for m in modalities], axis=1)
    count = has.sum(axis=1)
    keep = count == len(modalities) if complete else count >= 2
    return int((manifest.case_id.isin(train).to_numpy() & keep).sum())


def _slide_embedding_dim(cohort, preset: str) -> int | None:
    from ..models.slide_encoder import SLIDE_ENCODER_PRESETS
    from ..io.features import is_complete, read_patch_features

    feats = Path(cohort.meta.get("slides_dir") or "")
    first = next((feats / f"{s}.h5" for ss in cohort.manifest.slide_ids for s in ss
                  if is_complete(feats / f"{s}.h5")), None)
    if first is None:
        return None
    opts = dict(load_preset(preset).get("slide_encoder", {}))
    base = SLIDE_ENCODER_PRESETS.get(opts.pop("preset", "tiny"))
    cfg = base.replace(**opts, input_dim=int(read_patch_features(first).features.shape[1]))
    return int(cfg.output_dim)


def train_arm(cohort_path: str | Path, run: Path, arm: Arm, name: str, preset: str, seed: int, overrides: dict,
              manifest: pd.DataFrame,
              modalities: list[str], notes: list[str], progress: bool, device: str = "cpu") -> Path:
    """Train one arm for one seed (unless its embeddings exist) and embed the cohort; returns embeddings.h5."""
    from ..train.trainer import TrainConfig, Trainer
    from .embed import embed_with_model

    emb = run / "embeddings.h5"
    if emb.is_file():
        return emb
    mods = arm.modalities or modalities
    cfg = TrainConfig.from_preset(preset, seed=seed, progress=False, modalities=arm.modalities,
                                  model_overrides=arm.model_overrides, complete_cases=arm.complete_cases,
                                  train_missing_rate=arm.train_missing_rate,
                                  **{k: v for k, v in overrides.items() if k != "rna_fm"},
                                  rna_fm=overrides.get("rna_fm") if "rna" in mods else None, device=str(device))
    n = _train_patients(manifest, mods, cfg, arm.complete_cases)
    if n < 2:
        raise AblationError(f"arm {name!r}: {n} training patient(s) (seed {seed}); contrastive training needs at least 2"
                            + (" with every modality" if arm.complete_cases else ""))
    if n < cfg.batch_size:
        notes.append(f"{name}, seed {seed}: batch size {cfg.batch_size} > {n} training patients; used {n}")
        if progress:
            print(f"ablate: note: {notes[-1]}", flush=True)
        cfg = replace(cfg, batch_size=n)
    if progress:
        print(f"ablate: seed {seed}: training {name} ({n} patients, batch {cfg.batch_size})", flush=True)
    trainer = Trainer(cohort_path, run, cfg)
    if arm.freeze_slide_encoder and trainer.model.slide_encoder is not None:
        trainer.model.slide_encoder.requires_grad_(False)  # no gradient: AdamW leaves it (and its decay) alone
    trainer.fit()
    embed_with_model(run / "model", cohort_path, emb, progress=False, device=device)
    return emb


def run_ablations(cohort: str | Path, out: str | Path, preset: str = "tiny", steps: int = 300, seed: int = 0, rna_fm: str | None = None,
                  bench: bool = True, only: list[str] | None = None, progress: bool = True,
                  seeds: list[int] | None = None, batch_size: int | None = None, max_tokens: int | None = None,
                  folds: int = 5, device: str = "cpu") -> dict:
    """Train (and embed) every selected arm for every seed under ``out/seed_<s>/<arm>``; bench each seed and
    aggregate over seeds when ``bench``.

    Args:
        cohort: cohort folder with slide features.
        out: output folder.
        preset: model preset; steps, batch_size, max_tokens: training settings (None: the preset's).
        seed: the seed when ``seeds`` is not given.
        rna_fm: pretrained RNA foundation model folder (used by arms that train on RNA).
        only: arm names to run (``full`` is always added); unknown names raise :class:`AblationError`.
        seeds: seeds to run every arm with.
        folds: folds of the benchmark tasks.
        device: where the arms train and embed.

    Returns:
        ``{"models": {seed: {arm: embeddings path}}}`` without ``bench``; else the aggregate table (``ablation.json``).
    """
    from ..cohort import load_cohort
    from .bench import run_bench
    from .embed import embed_mean_pool
    from .tasks import derive_tasks

    seeds = list(seeds) if seeds else [seed]
    if batch_size is not None and batch_size < 2:
        raise AblationError(f"--batch-size must be >= 2, got {batch_size}")
    if steps < 1:
        raise AblationError(f"--steps must be >= 1, got {steps}")
    out = Path(out)
    c = load_cohort(cohort)
    modalities = c.modalities
    available = arms(preset, modalities, _slide_embedding_dim(c, preset) if "wsi" in modalities else None)
    chosen = select_arms(available, only)
    overrides = {"steps": steps, "batch_size": batch_size, "max_tokens": max_tokens, "rna_fm": rna_fm}
    notes: list[str] = []
    models: dict[int, dict[str, str]] = {}
    for s in seeds:
        models[s] = {}
        for name in chosen:
            if available[name].trained:
                models[s][name] = str(train_arm(cohort, out / f"seed_{s}" / name, available[name], name, preset, s,
                                                overrides, c.manifest, modalities, notes, progress, device))
    if BASELINE in chosen:
        mean_pool = out / "mean_pool.h5"
        if not mean_pool.is_file():
            embed_mean_pool(c.meta["slides_dir"], mean_pool, cohort)
        for s in seeds:
            models[s][BASELINE] = str(mean_pool)
    if not bench:
        return {"models": models, "notes": notes}
    per_seed = {}
    for s in seeds:
        if progress:
            print(f"ablate: seed {s}: bench", flush=True)
        res = run_bench(models[s], derive_tasks(c.manifest, folds, s), out / f"seed_{s}", c.manifest, s,
                        plots=False, progress=False)
        per_seed[s] = seed_metrics(res)
    table = aggregate(per_seed)
    table.update(notes=notes, settings={"preset": preset, "steps": steps, "batch_size": batch_size,
                                        "max_tokens": max_tokens, "folds": folds, "rna_fm": rna_fm, "seeds": seeds},
                 per_seed=per_seed)
    curve = write_training_missing(per_seed, out)
    if curve is not None:
        table["training_missing"] = curve
    atomic_write_json(table, out / "ablation.json")
    md = "# Ablations\n\n" + render_table(table)
    if curve is not None:
        md += ("\n## Training-time missingness\n\nThe `train-missing-<r>` arms train with a seeded fraction r of "
               "the training patients' molecular data hidden (per modality, patient-level); `full` is r = 0. "
               "Mean and 95 % t-interval over seeds (bands clipped to [0, 1]): `training_missing.csv`; whether a "
               "drop is real: the paired differences of those arms above.\n\n![](training_missing.png)\n")
    if notes:
        md += "\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(md, out / "ablation.md")
    return table
