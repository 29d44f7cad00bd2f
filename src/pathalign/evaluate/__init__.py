"""Evaluation: retrieval, linear probes, survival, benchmark runner."""
