"""The patch-encoder contract: a registry entry (:class:`PatchEncoderSpec`), the ready encoder
(:class:`PatchEncoder`) and the preprocessing each publisher prescribes (:class:`Preprocess`).

Each entry records what its publisher's model card and reference code say: architecture (a
``make_model`` hook), output (``"cls"``, ``"cls+mean"``, ``"pooler"``), preprocessing, inference
precision on a GPU, where the weights live on the Hugging Face Hub and which checkpoint files /
key prefixes the publisher uses. ``docs/patch_encoders.md`` lists the sources.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...errors import PathalignError
from ...registry import Registry

PATCH_ENCODERS: Registry[PatchEncoderSpec] = Registry("patch encoder")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


class PatchEncoderError(PathalignError, RuntimeError):
    """A patch encoder that cannot be built (unknown name, weights unavailable or not fitting)."""


@dataclass(frozen=True)
class Preprocess:
    """A publisher's eval transform: ``Resize(resize)`` (short side, ``interpolation``, antialiased,
    on uint8 like torchvision/PIL) → ``CenterCrop(crop)`` (``None``: no crop) → ``/255`` →
    ``Normalize(mean, std)``. ``None`` mean/std: no normalisation (the built-in encoder)."""

    resize: int | None = 224
    crop: int | None = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] | None = IMAGENET[0]
    std: tuple[float, float, float] | None = IMAGENET[1]

    def __post_init__(self):
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, not {self.interpolation!r}")

    def as_dict(self) -> dict:
        """JSON-ready description (written into features files and model cards)."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None}


@dataclass
class PatchEncoder:
    """A ready encoder: ``model(transform(batch)) -> [B, dim]`` for a uint8 ``[B,H,W,3]`` batch.

    Attributes:
        precision: the dtype the publisher runs inference in on a GPU (autocast); fp32 on CPU.
        preprocess: the transform's description.
    """

    name: str
    model: nn.Module
    transform: Callable[[Tensor], Tensor]
    dim: int
    precision: torch.dtype = torch.float32
    preprocess: Preprocess | None = None


@dataclass
class PatchEncoderSpec:
    """One registry entry.

    Attributes:
        name: registry name (``--encoder``).
        dim: output feature dim.
        description: one line for ``--help`` and docs.
        make_model: ``make_model(**overrides) -> nn.Module`` with random weights; ``overrides``
            (e.g. ``depth``) change the architecture, used to fit a checkpoint and in tests.
        convert: publisher state dict → the state dict of ``make_model``'s module (prefixes
            stripped, keys renamed, position embeddings resampled as the reference code does).
        fit: ``fit(state_dict) -> overrides`` read off the checkpoint (e.g. depth); default none.
        output: ``"cls"``, ``"cls+mean"`` or ``"pooler"`` (documentation; the module implements it).
        preprocess: the publisher's eval transform.
        precision: the publisher's inference dtype on GPU.
        hub_id, hub_subfolder: where the weights live on the Hub.
        weight_files: checkpoint file names the publisher uses, in order of preference.
        source: where these facts come from (model card / reference code).
    """

    name: str
    dim: int
    description: str
    make_model: Callable[..., nn.Module]
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] = lambda sd: sd
    fit: Callable[[dict[str, Tensor]], dict] = lambda sd: {}
    output: str = "cls"
    preprocess: Preprocess = field(default_factory=Preprocess)
    precision: torch.dtype = torch.float16
    hub_id: str | None = None
    hub_subfolder: str | None = None
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    source: str = ""
    needs_weights: bool = True


def register(spec: PatchEncoderSpec) -> PatchEncoderSpec:
    """Add ``spec`` to :data:`PATCH_ENCODERS` under its name."""
    return PATCH_ENCODERS.register(spec.name)(spec)


def strip_prefixes(sd: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Remove the first matching prefix of ``prefixes`` from every key (wrappers such as ``module.``
    are removed first), keep only tensors."""
    out = {}
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        for wrapper in ("module.", "_orig_mod."):
            key = key.removeprefix(wrapper)
        for p in prefixes:
            if key.startswith(p):
                key = key[len(p):]
                break
        out[key] = value
    return out


def count_blocks(sd: dict[str, Tensor], stem: str = "blocks.") -> int:
    """Number of transformer blocks in ``sd`` (1 + the largest ``<stem><i>.`` index; 0 if none)."""
    idx = [int(k[len(stem):].split(".", 1)[0]) for k in sd if k.startswith(stem) and k[len(stem):].split(".", 1)[0].isdigit()]
    return 1 + max(idx) if idx else 0
