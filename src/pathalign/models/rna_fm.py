"""pathalign's bulk-RNA foundation model, pretrained by masked-expression modelling.

Input: standardised log2(TPM+1) of a fixed gene set. During pretraining a random fraction
of genes is hidden (value set to 0 and a visibility flag of 0 fed alongside); the model
reconstructs the hidden ones from the others. At use time genes that were missing in the
data are hidden the same way, so no missing value is ever fed as if measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io.model_folder import (
    ConfigError,
    check_keys,
    dataclass_from_dict,
    legacy_preprocessing,
    make_config,
    read_config,
    read_weights,
    resolve_folder,
    save_folder,
)
from .layers import ResidualSwiGLU

ARCHITECTURE = "pathalign-rna-fm"


@dataclass
class RNAFMConfig:
    """Architecture of the RNA foundation model."""

    n_genes: int
    dim: int = 256
    depth: int = 2
    dropout: float = 0.1
    mask_ratio: float = 0.3

    def __post_init__(self):
        if self.n_genes < 2 or self.dim < 1 or self.depth < 0:
            raise ValueError(f"bad RNA FM config {self}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


class RNAFoundationModel(nn.Module):
    """Masked-expression autoencoder over genes; ``encode`` gives the sample embedding ``[B, dim]``."""

    def __init__(self, config: RNAFMConfig):
        super().__init__()
        self.config = config
        g, d = config.n_genes, config.dim
        self.embed = nn.Linear(2 * g, d)
        self.blocks = nn.Sequential(*[ResidualSwiGLU(d, dropout=config.dropout) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(d)
        self.decoder = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, g))

    def encode(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        """Embed ``x`` ``[B, G]``; ``visible`` ``[B, G]`` bool (default: the non-NaN entries)."""
        if visible is None:
            visible = ~torch.isnan(x)
        x = torch.where(visible, x, torch.zeros_like(x))
        h = self.embed(torch.cat([x, visible.to(x.dtype)], dim=-1))  # [B, 2G] -> [B, d]
        return self.norm(self.blocks(h))

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        """Reconstruction ``[B, G]`` of every gene from the visible ones."""
        return self.decoder(self.encode(x, visible))

    def save(self, out: str | Path, preprocessing: dict, metrics: dict | None = None) -> Path:
        """Write the model folder ``out`` (``model.safetensors`` + ``config.json``; see :mod:`pathalign.io.model_folder`).

        Args:
            out: the folder.
            preprocessing: the fitted RNA transform's state (its input genes and scaling).
            metrics: pretraining metrics to record.
        """
        training = {"metrics": metrics} if metrics else None
        config = make_config(ARCHITECTURE, asdict(self.config), {"rna": preprocessing}, training)
        return save_folder(out, self.state_dict(), config)

    @classmethod
    def load(cls, path: str | Path) -> tuple["RNAFoundationModel", dict]:
        """Load a saved model (eval mode) and its RNA preprocessing state.

        Args:
            path: the model folder, or a Hub id (``ORG/NAME``, ``hf-hub:ORG/NAME[@revision]``; a local path wins).
        """
        path = resolve_folder(path)
        cfg = read_config(path, ARCHITECTURE, _legacy_config, hint="; run 'pathalign pretrain-rna'")
        config = dataclass_from_dict(RNAFMConfig, cfg["model_args"], f"{path / 'config.json'} model_args")
        model = cls(config)
        try:
            model.load_state_dict(read_weights(path))
        except RuntimeError as e:
            raise ConfigError(f"{path / 'model.safetensors'}: weights do not fit config.json ({str(e)[:300]})") from None
        if "rna" not in (cfg.get("preprocessing") or {}):
            raise ConfigError(f"{path / 'config.json'}: no RNA preprocessing recorded")
        return model.eval(), cfg["preprocessing"]["rna"]


def _legacy_config(flat: dict, path: Path) -> dict:
    """A flat pathalign <= 0.1 RNA FM ``config.json`` (+ ``preprocessing.json``) in today's sections."""
    flat = {k: v for k, v in flat.items() if k != "kind"}
    names = {f.name for f in fields(RNAFMConfig)}
    model_args = {k: flat.pop(k) for k in list(flat) if k in names}
    metrics = flat.pop("metrics", None)
    check_keys(flat, [], f"{path / 'config.json'} (old layout)")
    return make_config(ARCHITECTURE, model_args, {"rna": legacy_preprocessing(path)},
                       {"metrics": metrics} if metrics else None)
