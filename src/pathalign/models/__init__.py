"""Model components: the F-RoPE slide encoder, attention backends, molecular encoders."""
from .slide_encoder import SLIDE_ENCODER_PRESETS, SlideEncoder, SlideEncoderConfig
from .packing import SlideInputError
from .attention import ATTENTION_BACKENDS

__all__ = ["SlideEncoder", "SlideEncoderConfig", "SLIDE_ENCODER_PRESETS", "SlideInputError", "ATTENTION_BACKENDS"]
