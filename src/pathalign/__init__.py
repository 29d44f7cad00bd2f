"""pathalign: align whole-slide images with molecular profiles in one embedding space."""
from .cohort import load_cohort
from .models import SlideEncoder, SlideEncoderConfig, SlideInputError
from .slides.features_io import read_patch_features

__version__ = "0.1.0"
__all__ = ["SlideEncoder", "SlideEncoderConfig", "SlideInputError", "load_cohort", "read_patch_features"]
