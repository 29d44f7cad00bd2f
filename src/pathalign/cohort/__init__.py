"""Cohorts: molecular readers, id rules, ``cohort build`` and training-time preprocessing."""
from .build import MODALITIES, MOLECULAR, Cohort, CohortSources, build_cohort, load_cohort
from .ids import CohortInputError, IdRule
from .readers import read_maf, read_matrix

__all__ = ["Cohort", "CohortSources", "CohortInputError", "IdRule", "MODALITIES", "MOLECULAR", "build_cohort",
           "load_cohort", "read_maf", "read_matrix"]
