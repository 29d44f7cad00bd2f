"""Cohort commands. ``pathalign cohort build`` aligns clinical data, slides and molecular tables by patient."""
from __future__ import annotations

import argparse

from .options import LIST_SYNTAX, ListOption, out_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cohort_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build a cohort folder", description=__doc__,
                       parents=[out_option("cohort folder to write")])
    b.add_argument("--clinical", help="clinical table (TSV/CSV/Parquet) with a case_id column and labels; GDC Biotab "
                   "header rows are dropped, missing-value markers ([Not Available], --, NA, not reported, ...) read "
                   "as missing, numeric columns as numbers (see docs/cohort.md)")
    b.add_argument("--decimal", default="auto", choices=["auto", "point", "comma"],
                   help="decimal mark of the tables' numbers: auto (in the clinical table a decimal comma such as "
                   "0,7886 is detected per column, 1,234 is ambiguous and kept as text; in molecular matrices a "
                   "comma is an error naming this option), point, or comma (every table)")
    b.add_argument("--case-col", default="case_id", help="patient id column in the clinical and slides tables")
    b.add_argument("--slides", help="slides table with slide_id and case_id columns")
    b.add_argument("--features", help="folder of <slide_id>.h5 patch features (or a preprocess/Trident output folder "
                   "with one features_<encoder>/ subfolder); only slides with a complete file count")
    b.add_argument("--rna", help="RNA matrix (genes x samples or samples x genes)")
    b.add_argument("--rna-units", default="tpm", help="tpm, counts, fpkm, log2tpm or log2fpkm (default tpm); the log "
                   "units are log2(x + p), p = --rna-pseudocount")
    b.add_argument("--rna-pseudocount", type=float, default=1.0,
                   help="p of log2(x + p) RNA (default 1; Xena/Toil write log2(TPM + 0.001)); values are stored as "
                   "log2(x + 1)")
    b.add_argument("--gene-lengths", help="gene, length (bp) table; needed with --rna-units counts")
    b.add_argument("--maf", action=ListOption, default=None, metavar="MAF",
                   help=f"one or more MAF files ({LIST_SYNTAX})")
    b.add_argument("--cnv", help="gene-level copy-number matrix, or a GISTIC 2 output folder (all_thresholded.by_genes"
                   ".txt, else the lesion calls of all_lesions.conf_XX.txt; see docs/cohort.md)")
    b.add_argument("--cnv-kind", default="gistic", help="gistic (thresholded -2..2) or log2 (ratios)")
    b.add_argument("--methylation", help="probe x sample beta matrix (NA allowed)")
    b.add_argument("--methylation-units", default="beta",
                   help="beta (0-1, default; rounding within 1e-4 is clipped), percent (0-100, divided by 100) or "
                   "mvalue (M-values, converted: beta = 2^M / (1 + 2^M)); percent or M-values declared as beta are "
                   "an error")
    b.add_argument("--orientation", default="auto",
                   help="auto (detect the axis with sample ids), samples-as-columns or samples-as-rows")
    b.add_argument("--id-rule", default="tcga", help="tcga (first 12 characters, tumour samples) or table")
    b.add_argument("--id-map", help="sample_id -> case_id table for --id-rule table")


def run(args: argparse.Namespace) -> int:
    """Build the cohort; an input error (:class:`~pathalign.errors.PathalignError`) reaches ``pathalign``'s
    ``main``, which prints it as one line ``pathalign: error: ...`` with exit code 2 (its traceback with
    ``--debug``)."""
    from ..cohort.build import CohortSources, build_cohort

    src = CohortSources(clinical=args.clinical, slides=args.slides, features=args.features, rna=args.rna,
                        rna_units=args.rna_units, rna_pseudocount=args.rna_pseudocount, gene_lengths=args.gene_lengths,
                        maf=args.maf or [], cnv=args.cnv, cnv_kind=args.cnv_kind, methylation=args.methylation,
                        methylation_units=args.methylation_units, orientation=args.orientation,
                        id_rule=args.id_rule, id_map=args.id_map, case_col=args.case_col, decimal=args.decimal)
    build_cohort(src, args.out)
    return 0
