"""CLI subcommands that are not part of a larger module."""
