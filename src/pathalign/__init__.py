"""pathalign: align whole-slide images with molecular profiles in one embedding space."""
from .cohort import load_cohort
from .models import SlideEncoder, SlideEncoderConfig, SlideInputError
from .models.pathalign_model import PathAlignConfig, PathAlignModel, load_model
from .models.siglip import MultimodalSigLIPLoss
from .slides.features_io import read_patch_features

__version__ = "0.1.0"
__all__ = ["MultimodalSigLIPLoss", "PathAlignConfig", "PathAlignModel", "SlideEncoder", "SlideEncoderConfig",
           "SlideInputError", "load_cohort", "load_model", "read_patch_features"]
