"""Every on-disk format a stage reads or writes: features files, ``embeddings.h5``, the cohort and model
folders, matrix files, checkpoints (weights and training checkpoints), the tissue GeoJSON, heatmaps and
Patho-Bench sample files, QuPath GeoJSON, atomic writes and the one Hugging Face Hub resolver.

The lowest layer above the foundations: of pathalign it may import only ``errors``, the foundations
(``registry``, ``geometry``, ``modalities``, ``devices``, ``hiding``) and ``distributed`` — the
``LAYERS`` table of ``tests/test_imports.py``, which checks it."""
