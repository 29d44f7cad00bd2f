"""The one base class of expected errors (bad input, missing file, unusable setting).

``pathalign.cli.main`` catches :class:`PathalignError` once and prints its message on one
line to stderr with exit code 2; anything else is a bug and keeps its traceback.
Every module's own error class derives from it, so callers of the Python API can catch
either the specific class or this one.
"""
from __future__ import annotations


class PathalignError(Exception):
    """An expected failure whose message names the file, slide, row or option at fault."""
