"""``ablate``: the seed table against scipy, the arms' error cases and the small-cohort batch rule (the t-interval
helper itself: test_stats.py)."""
from __future__ import annotations

import pytest
import scipy.stats

from pathalign.errors import PathalignError
from pathalign.evaluate.ablate import (
    AblationError,
    aggregate,
    arms,
    render_table,
    run_ablations,
    select_arms,
)

pytestmark = pytest.mark.slow  # trains several models (about a minute on 2 cores)


def test_aggregate_and_table():
    per_seed = {s: {"full": {"t bal": 0.8 + 0.01 * s, "wsi-rna recall@5": 0.6 + 0.02 * s, "wsi-rna chance@5": 0.16},
                    "worse": {"t bal": 0.6 + 0.012 * s, "wsi-rna recall@5": 0.61 + 0.01 * (s % 2)},
                    "mean-pooling": {"t bal": 0.55}} for s in (0, 1, 2)}
    table = aggregate(per_seed)
    assert table["values"]["full"]["t bal"]["mean"] == pytest.approx(0.81)
    diff = table["differences"]["worse"]["t bal"]
    ref = scipy.stats.ttest_rel([0.6, 0.612, 0.624], [0.8, 0.81, 0.82]).confidence_interval(0.95)
    assert diff["low"] == pytest.approx(ref.low) and diff["excludes_zero"]
    assert "wsi-rna recall@5" not in table["values"]["mean-pooling"]
    md = render_table(table)
    assert "| t bal |" in md and "-0.198 [" in md and " *" in md and "chance 0.16" in md
    assert "chance@5 |" not in md  # chance is shown beside recall, not as a row


def test_unknown_arm_and_bad_seeds_are_clear_errors(features_cohort, tmp_path):
    cohort, _, _ = features_cohort
    available = arms("tiny", ["wsi", "rna", "snp", "cnv", "methylation"], wsi_dim=110)
    assert select_arms(available, ["no-rope"]) == ["full", "no-rope"]
    with pytest.raises(AblationError, match="unknown arm.*'bogus'.*known: full, no-rope"):
        select_arms(available, ["no-rope", "bogus"])
    with pytest.raises(AblationError, match="bogus"):  # before any training
        run_ablations(cohort, tmp_path / "a", only=["bogus"], steps=1, progress=False)
    assert not (tmp_path / "a").exists()
    assert issubclass(AblationError, PathalignError)
    from pathalign.cli.options import parse_seeds  # the one seeds parser of every verb

    assert parse_seeds("0,1, 2") == [0, 1, 2]
    for bad in ("0,x", "1,1", "", "1.5"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(AblationError, match="--batch-size"):
        run_ablations(cohort, tmp_path / "b", batch_size=1, progress=False)


def test_small_cohort_clamps_the_batch_with_a_note_and_frozen_encoder_stays_at_init(features_cohort, tmp_path):
    """A batch larger than an arm's training patients (the 30-patient case; complete cases are rarer still)
    uses every patient and says so; the random-slide-encoder arm keeps the encoder at its initialisation."""
    import torch

    from pathalign.models.pathalign_model import PathAlignModel, load_model

    cohort, _, _ = features_cohort
    res = run_ablations(cohort, tmp_path / "abl", steps=2, seeds=[0], batch_size=500, max_tokens=32, bench=False,
                        only=["complete-case", "random-slide-encoder"], progress=False)
    assert set(res["models"][0]) == {"full", "complete-case", "random-slide-encoder"}
    notes = " ".join(res["notes"])
    assert "full, seed 0: batch size 500 >" in notes and "complete-case, seed 0: batch size 500 >" in notes
    n_full = int(notes.split("full, seed 0: batch size 500 > ")[1].split()[0])
    n_cc = int(notes.split("complete-case, seed 0: batch size 500 > ")[1].split()[0])
    assert 2 <= n_cc < n_full
    frozen = load_model(tmp_path / "abl" / "seed_0" / "random-slide-encoder" / "model")
    torch.manual_seed(0)  # the trainer seeds the model's initialisation with the training seed
    fresh = PathAlignModel(frozen.config)
    for k, v in fresh.slide_encoder.state_dict().items():
        assert torch.equal(v, frozen.slide_encoder.state_dict()[k]), k
    trained = load_model(tmp_path / "abl" / "seed_0" / "full" / "model")
    assert any(not torch.equal(v, trained.slide_encoder.state_dict()[k])
               for k, v in fresh.slide_encoder.state_dict().items())
