"""What every stage reads and writes: atomic writes and checkpoint files."""
