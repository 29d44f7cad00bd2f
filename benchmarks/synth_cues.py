"""Can the mean of patch features read a synthetic slide cue? (It should not, for the spatial cues.)

Renders ``--slides`` synthetic slides (alternating the two states of ``--cue``), cuts 128-px tissue
patches, encodes them with the built-in ``pathalign-stats`` encoder, averages per slide (mean
pooling) and prints the 5-fold accuracy of a logistic probe on the state. Chance is 0.5.

    python benchmarks/synth_cues.py --cue genomic_instability --slides 40
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pathalign.slides.patch_encoders import build_patch_encoder
from pathalign.synth.slides import render_slide, texture_bank
from pathalign.synth.state import INSTABILITY, PATTERNS, SynthConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cue", choices=("genomic_instability", "tumour_side"), default="genomic_instability")
    p.add_argument("--slides", type=int, default=40)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--difficulty", type=float, default=1.0)
    args = p.parse_args()
    params = SynthConfig(difficulty=args.difficulty).slide_params
    enc, bank = build_patch_encoder("pathalign-stats"), texture_bank(0, params["nucleus_contrast"])
    x, y = [], []
    for i in range(args.slides):
        rng = np.random.default_rng([5, i])
        state = i % 2
        inst = INSTABILITY[state] if args.cue == "genomic_instability" else INSTABILITY[int(rng.integers(2))]
        side = PATTERNS[state] if args.cue == "tumour_side" else PATTERNS[int(rng.integers(2))]
        img, frag = render_slide(rng, bank, "BRCA", int(rng.integers(2)), side, rng.normal(0, 1, 4), args.size,
                                 int(rng.integers(1, 5)), inst, params)
        patches = [img[r:r + 128, c:c + 128] for r in range(0, args.size, 128) for c in range(0, args.size, 128)
                   if (frag[r:r + 128, c:c + 128] >= 0).mean() > 0.5]
        with torch.no_grad():
            feats = enc.model(enc.transform(torch.from_numpy(np.stack(patches))))  # [n_patches, dim]
        x.append(feats.numpy().mean(0))
        y.append(state)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    acc = cross_val_score(clf, np.array(x), np.array(y), cv=5).mean()
    print(f"mean pooling of pathalign-stats features, cue {args.cue}, {args.slides} slides: "
          f"5-fold probe accuracy {acc:.3f} (chance 0.5)")


if __name__ == "__main__":
    main()
