"""``python -m pathalign`` (also what ``torchrun -m pathalign`` runs)."""
import sys

from .cli import main

sys.exit(main())
