"""pathalign: align whole-slide images with molecular profiles in one embedding space.

Example:
    >>> import pathalign
    >>> pathalign.list_models()
    ['exaone-path-2.5', 'small', 'tiny']
    >>> model = pathalign.load_model("runs/tcga/model")  # or "hf-hub:ORG/NAME"  # doctest: +SKIP
"""
from .cohort import load_cohort
from .models import PairHeads, SlideEncoder, SlideEncoderConfig, SlideInputError
from .models.pathalign_model import PathAlignConfig, PathAlignModel, create_model, list_models, load_model
from .models.siglip import MultimodalSigLIPLoss
from .slides.features_io import read_patch_features

__version__ = "0.1.0"
__all__ = ["MultimodalSigLIPLoss", "PairHeads", "PathAlignConfig", "PathAlignModel", "SlideEncoder",
           "SlideEncoderConfig", "SlideInputError", "create_model", "list_models", "load_cohort", "load_model",
           "read_patch_features"]
