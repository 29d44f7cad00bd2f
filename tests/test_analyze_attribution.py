"""The input attribution of ``pathalign analyze adapters`` finds the genes the synthetic cohort planted.

Every gene of the synthetic RNA table and every mutated gene of its MAF is driven by the hidden patient
state (``pathalign.synth.state.MECHANISMS``). Beside each one the test writes a decoy: the same values
given to randomly permuted patients, so the decoy has the gene's exact distribution (variance, mutation
frequency) and carries nothing a partner modality can see. An attribution that reads the trained model
ranks the planted genes first; one that reads only the inputs, or names the wrong columns, cannot tell
the two apart (half of its top list would be decoys).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pathalign.cohort import CohortSources, build_cohort
from pathalign.evaluate.analyze import analyze_adapters
from pathalign.synth import SynthConfig, generate_cohort
from pathalign.synth.state import latent_matrix
from pathalign.train.trainer import TrainConfig, Trainer

DECOY = "DECOY_"
TOP = 20  # what `analyze adapters --top` lists by default
MODALITIES = ["rna", "snp", "cnv"]


def _with_decoys(syn, out, rng):
    """The RNA table and the MAF with one decoy per gene (values or calls moved to permuted patients)."""
    rna = pd.read_csv(syn / "rna_tpm.tsv.gz", sep="\t", index_col=0)
    decoys = pd.DataFrame([rng.permutation(row) for row in rna.to_numpy()], columns=rna.columns,
                          index=[DECOY + g for g in rna.index])
    pd.concat([rna, decoys]).rename_axis("gene").to_csv(out / "rna_tpm.tsv.gz", sep="\t")
    head = [ln for ln in (syn / "mutations.maf").read_text().splitlines() if ln.startswith("#")]
    maf = pd.read_csv(syn / "mutations.maf", sep="\t", comment="#")
    barcodes = np.array(sorted(maf.Tumor_Sample_Barcode.unique()))
    parts = [maf]
    for gene, rows in maf.groupby("Hugo_Symbol"):
        moved = dict(zip(barcodes, rng.permutation(barcodes)))
        parts.append(rows.assign(Hugo_Symbol=DECOY + gene, Tumor_Sample_Barcode=rows.Tumor_Sample_Barcode.map(moved)))
    (out / "mutations.maf").write_text("\n".join(head) + "\n" + pd.concat(parts).to_csv(sep="\t", index=False))


@pytest.fixture(scope="module")
def attribution(tmp_path_factory):
    """``analyze adapters`` on a model trained on a synthetic cohort with decoys (800 patients, every molecular
    modality for each: enough patients per input that the model learns the state rather than memorising)."""
    tmp = tmp_path_factory.mktemp("attribution")
    syn = tmp / "synth"
    rates = {"wsi": 0.02, "rna": 1.0, "snp": 1.0, "cnv": 1.0, "methylation": 1.0}
    truth = generate_cohort(syn, SynthConfig(patients=800, seed=3, slide_size=512, genes=60, mutation_genes=30,
                                             cnv_genes=40, probes=40, modality_rates=rates), workers=1, progress=False)
    _with_decoys(syn, tmp, np.random.default_rng(0))
    cohort = tmp / "cohort"
    build_cohort(CohortSources(clinical=str(syn / "clinical.tsv"), slides=str(syn / "slides.tsv"),
                               rna=str(tmp / "rna_tpm.tsv.gz"), maf=[str(tmp / "mutations.maf")],
                               cnv=str(syn / "cnv_gistic.tsv")), cohort, progress=False)
    cfg = TrainConfig.from_preset("molecular", steps=300, batch_size=64, progress=False, seed=0, modalities=MODALITIES,
                                  checkpoint_every=1000, diagnostics_every=0, val_every=0)
    Trainer(cohort, tmp / "run", cfg).fit()
    result = analyze_adapters(tmp / "run" / "model", tmp / "analysis", cohort_path=cohort, top=10_000, draws=10)
    return result["attribution"], syn, truth


def _scores(attr, adapter) -> dict[str, float]:
    return {f["feature"]: f["score"] for f in attr[adapter]["top"]}


@pytest.mark.parametrize("adapter", ["rna->snp", "rna->cnv"])
def test_top_attributed_genes_are_the_planted_ones_not_their_decoys(attribution, adapter):
    attr, _, _ = attribution
    ranked = [f["feature"] for f in attr[adapter]["top"]]
    n, n_decoys = len(ranked), sum(f.startswith(DECOY) for f in ranked)
    assert n_decoys == n // 2  # every gene kept with its decoy (same variance, so both pass the variance filter)
    hits = sum(not f.startswith(DECOY) for f in ranked[:TOP])
    # chance: a ranking blind to the model draws its top list at random from all the features
    p_chance = stats.hypergeom.sf(hits - 1, n, n - n_decoys, TOP)
    assert hits >= 0.9 * TOP and p_chance < 1e-4, (adapter, hits, p_chance, ranked[:TOP])


@pytest.mark.parametrize("adapter", ["rna->snp", "rna->cnv", "snp->rna", "snp->cnv"])
def test_each_planted_gene_outweighs_its_decoy(attribution, adapter):
    """Paired by gene (a decoy of a frequent mutation is as frequent): a model-blind ranking wins half the pairs."""
    score = _scores(attribution[0], adapter)
    pairs = [g for g in score if not g.startswith(DECOY) and DECOY + g in score]
    wins = sum(score[g] > score[DECOY + g] for g in pairs)
    p_chance = stats.binom.sf(wins - 1, len(pairs), 0.5)  # sign test
    assert len(pairs) >= 25 and wins >= 0.8 * len(pairs) and p_chance < 1e-3, (adapter, wins, len(pairs), p_chance)


def test_rna_attribution_follows_how_strongly_the_hidden_state_drives_each_gene(attribution):
    """Among the planted genes, those the hidden shared state explains best (R² of log expression on
    ``latent_matrix``, computed here from the truth table) weigh most."""
    attr, syn, truth = attribution
    rna = pd.read_csv(syn / "rna_tpm.tsv.gz", sep="\t", index_col=0)
    rna = rna[[c for c in rna.columns if c[13:16] == "01A"]]  # tumour, vial A: one sample per patient
    rna.columns = [c[:12] for c in rna.columns]
    rna = np.log2(rna.loc[:, ~rna.columns.duplicated() & rna.columns.isin(truth.case_id)].T + 1)
    state = pd.DataFrame(latent_matrix(truth), index=truth.case_id).loc[rna.index].to_numpy()
    design = np.c_[np.ones(len(state)), state]
    fitted = design @ np.linalg.lstsq(design, rna.to_numpy(), rcond=None)[0]
    r2 = pd.Series(1 - (rna.to_numpy() - fitted).var(0) / rna.to_numpy().var(0), index=rna.columns)
    for adapter in ("rna->snp", "rna->cnv"):
        score = pd.Series({g: v for g, v in _scores(attr, adapter).items() if not g.startswith(DECOY)})
        rho = stats.spearmanr(score, r2[score.index]).statistic
        assert rho > 0.5, (adapter, rho)
