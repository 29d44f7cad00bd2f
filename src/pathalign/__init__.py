"""pathalign: align whole-slide images with molecular profiles in one embedding space.

Example:
    >>> import pathalign
    >>> pathalign.list_models()
    ['exaone-path-2.5', 'molecular', 'small', 'tiny']
    >>> model = pathalign.load_model("runs/tcga/model")  # or "hf-hub:ORG/NAME"  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.3.0"

# Public names -> the module defining them. Imported on first use (PEP 562) so that
# ``import pathalign.cli`` (``pathalign --help``) does not pull in torch, h5py or pandas.
_LAZY = {
    "load_cohort": ".cohort",
    "SlideEncoder": ".models",
    "SlideEncoderConfig": ".models",
    "SlideInputError": ".models",
    "PathAlignConfig": ".models.pathalign_model",
    "PathAlignModel": ".models.pathalign_model",
    "load_model": ".models.pathalign_model",
    "create_model": ".models.pathalign_model",
    "list_models": ".models.pathalign_model",
    "PairHeads": ".models",
    "MultimodalSigLIPLoss": ".models.siglip",
    "read_patch_features": ".io.features",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs; nothing runs here ("X as X" marks a re-export)
    from .cohort import load_cohort as load_cohort
    from .io.features import read_patch_features as read_patch_features
    from .models import PairHeads as PairHeads
    from .models import SlideEncoder as SlideEncoder
    from .models import SlideEncoderConfig as SlideEncoderConfig
    from .models import SlideInputError as SlideInputError
    from .models.pathalign_model import PathAlignConfig as PathAlignConfig
    from .models.pathalign_model import PathAlignModel as PathAlignModel
    from .models.pathalign_model import create_model as create_model
    from .models.pathalign_model import list_models as list_models
    from .models.pathalign_model import load_model as load_model
    from .models.siglip import MultimodalSigLIPLoss as MultimodalSigLIPLoss


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pathalign' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
