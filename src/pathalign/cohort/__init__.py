"""Cohorts: molecular readers, id rules, ``cohort build`` and the model-ready view (``model_view``)."""
from ..io.cohort_folder import Cohort, load_cohort
from .build import MODALITIES, MOLECULAR, CohortSources, build_cohort
from .ids import CohortInputError, IdRule
from .readers import read_maf, read_matrix

__all__ = ["Cohort", "CohortSources", "CohortInputError", "IdRule", "MODALITIES", "MOLECULAR", "build_cohort",
           "load_cohort", "read_maf", "read_matrix"]
