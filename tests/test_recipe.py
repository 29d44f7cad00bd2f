"""The molecular recipe: the ``molecular`` preset, ``--preset auto``, and the real-TCGA benchmark's helpers."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import seeded_rng

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("real_tcga", REPO / "benchmarks" / "real_tcga.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_choose_preset_picks_molecular_for_large_slide_free_cohorts():
    from pathalign.models.presets import MOLECULAR_MIN_PATIENTS, choose_preset

    assert choose_preset(["rna", "methylation"], 769) == "molecular"
    assert choose_preset(["rna", "snp", "cnv"], MOLECULAR_MIN_PATIENTS) == "molecular"
    assert choose_preset(["rna", "methylation"], MOLECULAR_MIN_PATIENTS - 1) == "tiny"  # batch 128 would not fit
    assert choose_preset(["wsi", "rna"], 5000) == "tiny"  # slides: the slide-encoder presets


def test_molecular_preset_is_linear_dropout_encoders_with_its_training_defaults():
    from pathalign import create_model
    from pathalign.train.trainer import TrainConfig

    model = create_model("molecular", modalities=["rna", "methylation"], input_dims={"rna": 12, "methylation": 9})
    enc = model.encoders["rna"]
    assert len(enc.blocks) == 0 and enc.drop.p == 0.3 and enc.input_noise == 0.3  # noise -> Linear -> dropout -> LN
    cfg = TrainConfig.from_preset("molecular")
    assert (cfg.batch_size, cfg.steps, cfg.lr) == (128, 500, 0.002)
    model.eval()
    x = torch.randn(3, 12)
    manual = torch.nn.functional.layer_norm(enc.proj(x), (128,), enc.norm.weight, enc.norm.bias)
    assert torch.allclose(model.encode_molecular("rna", x), manual, atol=1e-6)


def _molecular_cohort(tmp_path: Path, n: int) -> Path:
    from pathalign.cohort import CohortSources, build_cohort

    rng = seeded_rng(n)
    ids = [f"TCGA-AA-{i:04d}-01A" for i in range(n)]
    rna = pd.DataFrame(rng.random((n, 5)) * 10, index=ids, columns=[f"G{i}" for i in range(5)])
    beta = pd.DataFrame(rng.random((n, 4)), index=ids, columns=[f"M{i}" for i in range(4)])
    rna.rename_axis("sample_id").to_csv(tmp_path / "rna.tsv", sep="\t")
    beta.rename_axis("sample_id").to_csv(tmp_path / "meth.tsv", sep="\t")
    out = tmp_path / f"cohort{n}"
    build_cohort(CohortSources(rna=str(tmp_path / "rna.tsv"), methylation=str(tmp_path / "meth.tsv")), out,
                 progress=False)
    return out


def test_train_preset_auto_resolves_from_the_cohort(tmp_path):
    from pathalign.cli.train import add_arguments
    from pathalign.models.presets import resolve_preset

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--cohort", "c", "--out", "o"]).preset == "auto"
    big, small = _molecular_cohort(tmp_path, 210), _molecular_cohort(tmp_path, 40)
    notes = []
    assert resolve_preset("auto", str(big), None, report=notes.append) == "molecular"
    assert notes and notes[0].startswith("--preset auto: molecular")
    assert resolve_preset("auto", str(small), None) == "tiny"
    assert resolve_preset("auto", str(big), ["rna"]) == "tiny"  # one modality: nobody has two
    assert resolve_preset("small", str(big), None) == "small"


def test_ablate_preset_auto_is_resolved_once_from_the_cohort(tmp_path, monkeypatch, capsys):
    """ablate --preset auto picks the preset train would (every arm trained with it), before run_ablations."""
    from pathalign.cli import main
    from pathalign.evaluate import ablate

    seen = {}

    def fake_run_ablations(cohort, out, preset, *args, **kwargs):
        seen["preset"] = preset
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "ablation.md").write_text("table")

    monkeypatch.setattr(ablate, "run_ablations", fake_run_ablations)
    big = _molecular_cohort(tmp_path, 210)
    assert main(["ablate", "--cohort", str(big), "--out", str(tmp_path / "abl"), "--preset", "auto",
                 "--device", "cpu"]) == 0
    assert seen["preset"] == "molecular" and "--preset auto: molecular" in capsys.readouterr().out


def test_the_cli_modules_hold_no_library_logic():
    """The helpers live in the library; the verbs' modules only parse and call them."""
    import pathalign.cli.embed
    import pathalign.cli.heatmap
    import pathalign.cli.train
    from pathalign.cohort.build import features_dir_for  # noqa: F401
    from pathalign.evaluate.heatmap import patient_targets  # noqa: F401
    from pathalign.models.presets import resolve_preset  # noqa: F401

    assert not hasattr(pathalign.cli.train, "resolve_preset")
    assert not hasattr(pathalign.cli.heatmap, "patient_targets")
    assert not hasattr(pathalign.cli.embed, "features_option")


def test_benchmark_log2_clipping():
    bench = _bench_module()
    rna = pd.DataFrame([[-0.5, 3.0], [2.0, -1.7]])
    clipped, n_neg = bench.clip_negative_log2(rna)
    assert n_neg == 2 and clipped.to_numpy().tolist() == [[0.0, 3.0], [2.0, 0.0]]


def test_benchmark_recall_at_k_matches_a_plain_loop():
    bench = _bench_module()
    rng = seeded_rng()
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    fwd, back = bench.recall_at_k(a, b, k=5)
    an, bn = a / np.linalg.norm(a, axis=1)[:, None], b / np.linalg.norm(b, axis=1)[:, None]

    def plain(x, y):
        hits = 0
        for i in range(len(x)):
            sims = [float(x[i] @ y[j]) for j in range(len(y))]
            order = sorted(range(len(y)), key=lambda j: -sims[j])
            hits += i in order[:5]
        return hits / len(x)

    assert fwd == pytest.approx(plain(an, bn)) and back == pytest.approx(plain(bn, an))


def test_input_noise_is_gaussian_on_the_input_in_training_only():
    from pathalign.models.molecular import MLPEncoder

    seed = 5
    torch.manual_seed(seed)
    enc = MLPEncoder(7, 8, depth=0, dropout=0.0, input_noise=0.3)
    x = torch.randn(4, 7)
    enc.eval()
    plain = torch.nn.functional.layer_norm(enc.proj(x), (8,), enc.norm.weight, enc.norm.bias)
    assert torch.equal(enc(x), plain), f"seed={seed}"
    enc.train()
    torch.manual_seed(seed)
    noisy = enc(x)
    torch.manual_seed(seed)
    expected = torch.nn.functional.layer_norm(enc.proj(x + 0.3 * torch.randn(4, 7)), (8,), enc.norm.weight, enc.norm.bias)
    assert torch.allclose(noisy, expected, atol=1e-6), f"seed={seed}"
    with pytest.raises(ValueError, match="input_noise must be >= 0"):
        MLPEncoder(7, 8, input_noise=-1)


def test_input_noise_travels_from_the_config_and_survives_save_and_load(tmp_path):
    from pathalign import create_model, load_model

    model = create_model("tiny", modalities=["rna", "methylation"], input_dims={"rna": 5, "methylation": 4},
                         input_noise=0.2)
    assert model.encoders["rna"].input_noise == 0.2 and model.encoders["methylation"].input_noise == 0.2
    model.save_pretrained(tmp_path / "m")
    assert load_model(tmp_path / "m").encoders["rna"].input_noise == 0.2
    assert create_model("tiny", modalities=["rna", "snp"], input_dims={"rna": 5, "snp": 4}).encoders["rna"].input_noise == 0


def test_benchmark_cca_slices_equal_separate_fits_of_fewer_components():
    from sklearn.cross_decomposition import CCA

    bench = _bench_module()
    rng = seeded_rng()
    z = rng.normal(size=(80, 3))
    xa = np.hstack([z, rng.normal(size=(80, 5))]) + 0.3 * rng.normal(size=(80, 8))
    xb = np.hstack([z @ rng.normal(size=(3, 3)), rng.normal(size=(80, 4))])
    fit, ev = np.arange(60), np.arange(60, 80)
    sliced = bench.cca_recalls(xa, xb, fit, ev, pca=None, ks=[2, 4])
    u, v = CCA(n_components=2, max_iter=500).fit(xa[fit], xb[fit]).transform(xa[ev], xb[ev])
    assert sliced[2] == bench.recall_at_k(u, v)
