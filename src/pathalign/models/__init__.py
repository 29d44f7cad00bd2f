"""Model components: the F-RoPE slide encoder, attention backends, molecular encoders, pair heads, presets."""
from .attention import ATTENTION_BACKENDS
from .molecular import MOLECULAR_ENCODERS
from .packing import SlideInputError
from .pair_heads import PairHeads, PairProjection
from .presets import MODEL_PRESETS
from .slide_encoder import SlideEncoder
from .slide_encoder_config import SLIDE_ENCODER_PRESETS, SlideEncoderConfig

__all__ = ["ATTENTION_BACKENDS", "MODEL_PRESETS", "MOLECULAR_ENCODERS", "PairHeads", "PairProjection",
           "SLIDE_ENCODER_PRESETS", "SlideEncoder", "SlideEncoderConfig", "SlideInputError"]
