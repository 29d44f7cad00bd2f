"""Patch encoders: a registry of models that turn RGB patches into feature vectors.

Entries (one module per family; each records its publisher's architecture, output,
preprocessing, precision and checkpoint layout — sources in ``docs/patch_encoders.md``):

* ``pathalign-stats`` (default, built in, no weights) — :mod:`.builtin`;
* timm ViTs — ``exaone-path-2.5``, ``uni``, ``uni2-h``, ``virchow2``, ``h-optimus-0``,
  ``prov-gigapath`` — :mod:`.vit`;
* ``conch-v1.5`` (ViT-L/16 trunk + attentional pooler) — :mod:`.conch`;
* ``phikon-v2`` (transformers ``Dinov2Model`` keys mapped onto timm) — :mod:`.phikon`.

Weights come from ``weights=``: a checkpoint file, a Hub snapshot folder (or the repository
root holding the entry's subfolder), a state dict, or a Hub id (``LGAI-EXAONE/EXAONE-Path-2.5``)
resolved through the Hugging Face cache (:mod:`pathalign.io.hub`); with no ``weights`` the
entry's own Hub id is used.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import builtin, conch, phikon, vit  # noqa: F401  (fill the registry)
from .base import (
    IMAGENET,
    PATCH_ENCODERS,
    PatchEncoder,
    PatchEncoderError,
    PatchEncoderSpec,
    Preprocess,
    strip_prefixes,
)
from .transforms import make_transform

__all__ = ["PATCH_ENCODERS", "PatchEncoder", "PatchEncoderError", "PatchEncoderSpec", "Preprocess", "IMAGENET",
           "build_patch_encoder", "load_publisher_weights", "find_weight_file", "get_spec", "make_transform",
           "strip_prefixes"]


def get_spec(name: str) -> PatchEncoderSpec:
    """The registry entry ``name``; :class:`PatchEncoderError` listing the known names otherwise."""
    try:
        return PATCH_ENCODERS.get(name)
    except KeyError as e:
        raise PatchEncoderError(str(e.args[0])) from None


def find_weight_file(path: Path, spec: PatchEncoderSpec) -> Path:
    """The checkpoint file inside ``path`` (a file is returned as is).

    Looks for the publisher's file names in ``path``, then in ``path/<hub_subfolder>`` (a whole
    repository snapshot was given).
    """
    from ...io.hub import find_checkpoint

    if path.is_file():
        return path
    names = tuple(dict.fromkeys(spec.weight_files + ("model.safetensors", "pytorch_model.bin")))
    found = find_checkpoint(path, names, spec.hub_subfolder)
    if found is not None:
        return found
    raise PatchEncoderError(f"{path}: no {' or '.join(names)} for patch encoder {spec.name!r}"
                            + (f" (looked in {path / spec.hub_subfolder} too)" if spec.hub_subfolder else ""))


def _read(spec: PatchEncoderSpec, weights) -> tuple[dict[str, Tensor], str]:
    from ...io.checkpoints import CheckpointError, read_state_dict
    from ...io.hub import HubError, is_hub_id, resolve_source

    if isinstance(weights, dict):
        return weights, "state dict"
    try:
        hub = is_hub_id(weights)
        patterns = list(spec.weight_files) + ["config.json"]
        path = resolve_source(weights, subfolder=spec.hub_subfolder if hub else None,
                              allow_patterns=None if hub and spec.hub_subfolder else patterns,
                              what=f"the {spec.name} patch encoder weights")
        file = find_weight_file(path, spec)
        return read_state_dict(file), str(file)
    except (HubError, CheckpointError) as e:
        raise PatchEncoderError(f"patch encoder {spec.name!r}: {e}. Pass --weights FILE_OR_FOLDER (a local copy: "
                                f"the checkpoint file or its Hub snapshot folder) or a Hub id.") from None


def load_publisher_weights(spec: PatchEncoderSpec, weights: str | Path | Mapping[str, Tensor],
                           **overrides: Any) -> nn.Module:
    """Build ``spec``'s model fitted to ``weights`` (publisher layout) and load them strictly.

    Args:
        spec: the registry entry.
        weights: a file, folder, Hub id or state dict in the publisher's layout.
        **overrides: architecture overrides on top of what is read off the weights.

    Returns:
        The model in eval mode (CPU, fp32).

    Raises:
        PatchEncoderError: unreadable weights, or keys/shapes that do not fit (names them).
    """
    raw, where = _read(spec, weights)
    sd = spec.convert(dict(raw))
    model = spec.make_model(**{**spec.fit(sd), **overrides})
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise PatchEncoderError(f"{where}: weights do not fit patch encoder {spec.name!r}: {str(e)[:600]}") from None
    if missing or unexpected:
        raise PatchEncoderError(
            f"{where}: weights do not fit patch encoder {spec.name!r} — missing {len(missing)} keys "
            f"{sorted(missing)[:6]}, unexpected {len(unexpected)} keys {sorted(unexpected)[:6]} "
            f"(after stripping the publisher's prefixes; is this the right encoder?)")
    return model.eval()


def build_patch_encoder(name: str, weights: str | Path | Mapping[str, Tensor] | None = None,
                        device: str | torch.device = "cpu", pretrained: bool = True,
                        **overrides: Any) -> PatchEncoder:
    """Build the registered patch encoder ``name``.

    Args:
        name: registry name (``pathalign-stats``, ``uni``, ``exaone-path-2.5``, ...).
        weights: checkpoint file, Hub snapshot folder, state dict or Hub id; ``None``: the
            entry's own Hub id (when ``pretrained``).
        device: where the model goes.
        pretrained: ``False`` with ``weights=None`` builds random weights (tests, smoke runs).
        **overrides: architecture overrides (e.g. ``depth`` for a reduced test model).

    Returns:
        The ready :class:`PatchEncoder` (eval mode, fp32 weights on ``device``).
    """
    spec = get_spec(name)
    if not spec.needs_weights or (weights is None and not pretrained):
        model = spec.make_model(**overrides).eval()
    else:
        if weights is None and spec.hub_id is None:
            raise PatchEncoderError(f"patch encoder {name!r} has no Hub source: pass --weights FILE")
        model = load_publisher_weights(spec, spec.hub_id if weights is None else weights, **overrides)
    model.to(device)
    return PatchEncoder(name, model, make_transform(spec.preprocess), spec.dim, spec.precision, spec.preprocess)
