"""``pathalign analyze adapters``: what each pair adapter W_ij keeps of its modality, on a cohort.

Writes to ``--out``: ``adapters.json`` (every number, named), ``adapters.png`` (same-source
subspace overlaps and same-target CKA as heatmaps, with their random nulls), ``attribution.png``
(top input features per adapter) and ``adapters.md`` (a short summary). See
:mod:`pathalign.evaluate.adapters` for the measures and ``docs/choices.md`` for the nulls.

Examples:
    pathalign analyze adapters --model run/model --out adapters
    pathalign analyze adapters --model run/model --cohort cohort --embeddings emb.h5 --out adapters
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import PathalignError
from ..io.atomic import atomic_write_json, atomic_write_text
from .adapters import same_source_overlaps, same_target_cka, top_features
from .molecular_inputs import molecular_inputs

if TYPE_CHECKING:
    from ..models.pathalign_model import PathAlignModel


class AnalysisError(PathalignError, ValueError):
    """A model and a cohort that cannot be analysed together; the message says why."""


def adapter_weights(model: PathAlignModel) -> dict[tuple[str, str], np.ndarray]:
    """``{(source, target): W [P, d_source]}`` of a model with pair adapters."""
    heads = model.pair_heads
    if not heads.pair_adapters:
        raise AnalysisError("this model has no pair adapters (trained with one shared projection): nothing to analyse")
    return {tuple(name.split("->")): lin.weight.detach().double().numpy() for name, lin in heads.adapters.items()}


def _encoder_inputs(model, cohort_path, heldout: list[str] | None):
    """Preprocessed inputs ``{m: (patient ids, x [n, F], feature names)}`` of the model's molecular modalities."""
    from ..cohort import load_cohort

    cohort = load_cohort(cohort_path)
    mods = [m for m in model.modalities if m != "wsi"]
    missing = [m for m in mods if m not in cohort.modalities]
    if missing:
        raise AnalysisError(f"{cohort_path}: the cohort has no {missing} (the model was trained on {model.modalities})")
    out = {}
    keep = set(heldout) if heldout is not None else None
    for m in mods:
        inp = molecular_inputs(model, cohort, m)
        if inp.warning:
            print(f"warning: {inp.warning}", file=sys.stderr)
        rows = [i for i, p in enumerate(inp.ids) if keep is None or p in keep]
        state = model.preprocessing[m]
        names = list(state.get("features", [])) + [f"{f} (missing)" for f in state.get("na_features", [])]
        x = inp.x[rows]
        if len(names) != x.shape[1]:
            names = [f"{m}_{j}" for j in range(x.shape[1])]
        out[m] = ([inp.ids[i] for i in rows], x, names)
    return out


def _encode_with_grad(model, modality: str, x):
    """The modality encoder on ``x`` with gradients, a frozen foundation model included."""

    enc = model.encoders[modality]
    if hasattr(enc, "foundation"):  # frozen FM: runs under no_grad in training; here the gradient must reach x
        return enc.head(enc.foundation.encode(x[:, : enc.in_dim]))
    return enc(x)


def _slide_embeddings(path, heldout) -> dict[str, np.ndarray]:
    from ..io.embeddings import patient_ids, patient_means, read_embeddings

    emb = read_embeddings(path)
    if "wsi" not in emb:
        return {}
    return patient_means(patient_ids(emb, "wsi"), emb["wsi"]["embeddings"], keep=heldout, dtype=np.float64)


def analyze_adapters(model_path: str | Path, out: str | Path, cohort_path: str | Path | None = None,
                     embeddings_path: str | Path | None = None, heldout_only: bool = False,
                     k: int = 8, top: int = 20, draws: int = 200, seed: int = 0) -> dict:
    """Run the adapter analysis and write its files; returns what ``adapters.json`` holds.

    Args:
        model_path: a saved pathalign model folder.
        out: output folder.
        cohort_path: cohort for CKA and attribution (molecular modalities are re-encoded from it).
        embeddings_path: ``embeddings.h5`` of the same model, for the slide modality.
        heldout_only: restrict to the model's held-out patients.
        k: dominant input directions compared per adapter.
        top: features listed per adapter.
        draws: random matrices per null.
        seed: seed of the nulls.
    """
    import torch

    from ..models.pathalign_model import load_model

    model = load_model(model_path)
    weights = adapter_weights(model)
    heldout = ((model.training_info or {}).get("splits") or {}).get("val") if heldout_only else None
    if heldout_only and not heldout:
        raise AnalysisError(f"{model_path}: the model records no held-out patients; use --patients all")
    result: dict = {
        "model": str(model_path),
        "adapters": {f"{s}->{t}": {"shape": list(w.shape),
                                     "singular_values": np.linalg.svd(w, compute_uv=False).round(6).tolist()}
                     for (s, t), w in weights.items()},
        "same_source": same_source_overlaps(weights, k, draws, seed),
        "same_target": [], "attribution": {},
    }
    if cohort_path is not None:
        inputs = _encoder_inputs(model, cohort_path, heldout)
        raw: dict[str, dict[str, np.ndarray]] = {}
        with torch.no_grad():
            for m, (ids, x, _) in inputs.items():
                raw[m] = dict(zip(ids, model.encode_molecular(m, torch.from_numpy(x)).double().numpy()))
        if embeddings_path is not None and "wsi" in model.modalities:
            raw["wsi"] = _slide_embeddings(embeddings_path, set(heldout) if heldout else None)
            if not raw["wsi"]:
                raise AnalysisError(f"{embeddings_path}: no slide embeddings (wsi group) for the analysed patients")
        projected = {}
        for (s, t), w in weights.items():
            if s in raw and t in raw:
                projected[(s, t)] = {p: w @ z for p, z in raw[s].items()}
        result["same_target"] = same_target_cka(projected, raw, weights, max(10, draws // 4), seed)
        result["attribution"] = _attribution(model, inputs, raw, top)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, out / "adapters.json")
    _plot(result, out)
    atomic_write_text(summary_markdown(result), out / "adapters.md")
    return result


def _attribution(model, inputs, raw, top: int) -> dict:
    """Mean |gradient x input| of the cosine with the patient's own partner, per adapter i->j (i molecular)."""
    import torch

    out = {}
    heads = model.pair_heads
    for (s, t) in [tuple(k.split("->")) for k in heads.adapters]:
        if s not in inputs or t not in raw:
            continue
        ids, x, names = inputs[s]
        both = [i for i, p in enumerate(ids) if p in raw[t]]
        if len(both) < 2:
            continue
        xs = torch.from_numpy(x[both]).float().requires_grad_(True)
        partner = torch.from_numpy(np.stack([raw[t][ids[i]] for i in both])).float()
        with torch.enable_grad():
            u = heads.project(s, t, _encode_with_grad(model, s, xs))
            w = heads.project(t, s, partner).detach()
            (u * w).sum().backward()  # sum over patients of each patient's cosine with its partner
        score = (xs.grad * xs.detach()).abs().mean(0).numpy()
        out[f"{s}->{t}"] = {"patients": len(both), "top": top_features(score, names, top)}
    return out


def _plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in result["same_source"]:
        groups.setdefault(("same source", r["source"]), []).append((r["targets"], r["overlap"], r["null"]["q95"]))
    for r in result["same_target"]:
        if "cka" in r:
            groups.setdefault(("same target", r["target"]), []).append((r["sources"], r["cka"], r["null"]["q95"]))
    if groups:
        cols = min(5, len(groups))
        rows = int(np.ceil(len(groups) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 3.4 * rows), squeeze=False)
        fig.subplots_adjust(wspace=0.75, hspace=0.75)  # room for the modality names on each panel's axes
        for ax, ((kind, mod), items) in zip(axes.flat, sorted(groups.items())):
            names = sorted({n for pair, _, _ in items for n in pair})
            mat = np.full((len(names), len(names)), np.nan)
            for (a, b), v, _ in items:
                mat[names.index(a), names.index(b)] = mat[names.index(b), names.index(a)] = v
            im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
            for (a, b), v, q in items:
                for i, j in ((names.index(a), names.index(b)), (names.index(b), names.index(a))):
                    ax.text(j, i, f"{v:.2f}{'*' if v > q else ''}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            label = "overlap of W_{m->x}" if kind == "same source" else "CKA of W_{x->m} z_x"
            ax.set_title(f"{kind}: {mod}\n{label}", fontsize=8)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        fig.colorbar(im, ax=axes, shrink=0.6, label="* = above the random null's 95th percentile")
        fig.savefig(out / "adapters.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
    attr = result["attribution"]
    if attr:
        cols = min(4, len(attr))
        rows = int(np.ceil(len(attr) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
        for ax, (name, a) in zip(axes.flat, sorted(attr.items())):
            feats = a["top"][:10][::-1]
            ax.barh([f["feature"][:18] for f in feats], [f["score"] for f in feats], color="tab:blue")
            ax.set_title(f"{name} (n={a['patients']})", fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(attr):]:
            ax.axis("off")
        fig.suptitle("input features driving each adapter's alignment (mean |gradient x input|)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "attribution.png", dpi=120)
        plt.close(fig)


def summary_markdown(result: dict) -> str:
    """A short Markdown summary of :func:`analyze_adapters`' result."""
    lines = [f"# Adapter analysis of `{result['model']}`", ""]
    if result["same_source"]:
        lines += ["## Adapters reading the same modality (overlap of the k dominant input directions; null = random matrices)", "",
                  "| source | targets | overlap | null mean | null 95% | above null |", "|---|---|---|---|---|---|"]
        for r in result["same_source"]:
            lines.append(f"| {r['source']} | {' vs '.join(r['targets'])} | {r['overlap']:.3f} | "
                         f"{r['null']['mean']:.3f} | {r['null']['q95']:.3f} | {'yes' if r['above_null'] else 'no'} |")
        lines.append("")
    scored = [r for r in result["same_target"] if "cka" in r]
    if scored:
        lines += ["## Adapters landing in spaces shared with one modality (linear CKA over patients)", "",
                  "| target | sources | patients | CKA | null mean | null 95% | above null |",
                  "|---|---|---|---|---|---|---|"]
        for r in scored:
            lines.append(f"| {r['target']} | {' vs '.join(r['sources'])} | {r['n']} | {r['cka']:.3f} | "
                         f"{r['null']['mean']:.3f} | {r['null']['q95']:.3f} | {'yes' if r['above_null'] else 'no'} |")
        lines.append("")
    if result["attribution"]:
        lines += ["## Input features each adapter weighs most (mean |gradient x input|)", ""]
        for name, a in sorted(result["attribution"].items()):
            lines.append(f"- **{name}** (n={a['patients']}): " + ", ".join(f["feature"] for f in a["top"][:8]))
        lines.append("")
    return "\n".join(lines)
