"""Seeded, patient-level hiding of modalities: one plan shared by inference-time degradation curves
(:mod:`pathalign.evaluate.missing`) and training-time missingness (``TrainConfig.train_missing_rate``).

A plan puts the patients that have a modality in one random order per modality; at rate r the first
``round(r * n)`` are hidden. Plans are nested across rates (a patient hidden at 0.25 is hidden at 0.5),
so curves over rates change only by what the extra hidden patients take away.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class HidingPlan:
    """Which patients lose which modality at a given rate (nested across rates for one seed)."""

    orders: dict[str, np.ndarray]  # modality -> patient ids that have it, in hiding order

    @classmethod
    def draw(cls, present: dict[str, list[str]], seed: int) -> HidingPlan:
        """A plan for ``{modality: patients that have it}`` from ``seed`` (patient-level, reproducible)."""
        orders = {}
        for i, (m, ids) in enumerate(sorted(present.items())):
            rng = np.random.default_rng([seed, i])
            ids = np.array(sorted(ids), dtype=object)
            orders[m] = ids[rng.permutation(len(ids))]
        return cls(orders)

    def hidden(self, modality: str, rate: float) -> set[str]:
        """Patients whose ``modality`` is hidden at ``rate`` (``round(rate * n)`` of the n that have it)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"missing rate must be in [0, 1], got {rate}")
        order = self.orders.get(modality, np.array([], dtype=object))
        return set(order[: int(round(rate * len(order)))].tolist())


def hidden_in_training(manifest: pd.DataFrame, train_ids: Iterable[str], modalities: Iterable[str], rate: float,
                       seed: int) -> dict[str, set[str]]:
    """Training-time missingness: for each molecular modality in ``modalities``, the training patients
    (``train_ids``) that lose it at ``rate`` under the plan drawn from ``seed`` ({} when ``rate`` is 0).

    ``manifest`` is a cohort manifest (``case_id`` and ``has_<modality>`` columns).
    """
    if rate <= 0:
        return {}
    train = manifest.case_id.isin(set(train_ids))
    present = {m: manifest.case_id[train & manifest[f"has_{m}"]].astype(str).tolist()
               for m in modalities if m != "wsi" and f"has_{m}" in manifest}
    plan = HidingPlan.draw(present, seed)
    return {m: plan.hidden(m, rate) for m in present}
