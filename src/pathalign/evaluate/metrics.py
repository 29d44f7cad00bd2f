"""The headline metric of each task type, shared by the benchmark runner and its plots."""
from __future__ import annotations

# task type -> the metric reported first and plotted
PRIMARY: dict[str, str] = {"classification": "balanced_accuracy", "survival": "c_index"}
