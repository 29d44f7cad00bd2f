"""Alignment training: data, trainer, CLI."""
