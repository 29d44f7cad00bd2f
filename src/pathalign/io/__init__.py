"""Every on-disk format a stage reads or writes: features files, ``embeddings.h5``, the cohort and model
folders, matrix files, checkpoints, QuPath GeoJSON, atomic writes and the one Hugging Face Hub resolver.

The lowest layer above the foundations: it imports nothing of pathalign but ``errors``, ``registry`` and
``modalities`` (``tests/test_imports.py`` checks it)."""
