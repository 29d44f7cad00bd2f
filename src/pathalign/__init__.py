"""pathalign: align whole-slide images with molecular profiles in one embedding space."""
from .models import SlideEncoder, SlideEncoderConfig, SlideInputError

__version__ = "0.1.0"
__all__ = ["SlideEncoder", "SlideEncoderConfig", "SlideInputError"]
