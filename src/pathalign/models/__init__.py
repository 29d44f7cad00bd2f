"""Model components: the F-RoPE slide encoder, attention backends, molecular encoders, pair heads, presets.

The names below are imported on first use (PEP 562), so that a module that needs only
:mod:`pathalign.models.preprocessing` (numpy and pandas: the baselines, ``pathalign bench --help``)
does not pull in torch through this package.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> the submodule defining it.
_LAZY = {
    "ATTENTION_BACKENDS": ".attention",
    "MOLECULAR_ENCODERS": ".molecular",
    "SlideInputError": ".packing",
    "PairHeads": ".pair_heads",
    "PairProjection": ".pair_heads",
    "MODEL_PRESETS": ".presets",
    "SlideEncoder": ".slide_encoder",
    "SLIDE_ENCODER_PRESETS": ".slide_encoder_config",
    "SlideEncoderConfig": ".slide_encoder_config",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs; nothing runs here
    from .attention import ATTENTION_BACKENDS as ATTENTION_BACKENDS
    from .molecular import MOLECULAR_ENCODERS as MOLECULAR_ENCODERS
    from .packing import SlideInputError as SlideInputError
    from .pair_heads import PairHeads as PairHeads
    from .pair_heads import PairProjection as PairProjection
    from .presets import MODEL_PRESETS as MODEL_PRESETS
    from .slide_encoder import SlideEncoder as SlideEncoder
    from .slide_encoder_config import SLIDE_ENCODER_PRESETS as SLIDE_ENCODER_PRESETS
    from .slide_encoder_config import SlideEncoderConfig as SlideEncoderConfig


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pathalign.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
