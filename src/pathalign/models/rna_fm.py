"""pathalign's bulk-RNA foundation model, pretrained by masked-expression modelling.

Input: standardised log2(TPM+1) of a fixed gene set. During pretraining a random fraction
of genes is hidden (value set to 0 and a visibility flag of 0 fed alongside); the model
reconstructs the hidden ones from the others. At use time genes that were missing in the
data are hidden the same way, so no missing value is ever fed as if measured.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .layers import ResidualSwiGLU


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

    def save(self, out: str | Path, preprocessing: dict, extra: dict | None = None) -> None:
        """Write ``model.safetensors``, ``config.json`` and ``preprocessing.json`` into ``out``."""
        from safetensors.torch import save_file

        from ..io.atomic import atomic_path, atomic_write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        atomic_write_json({"kind": "pathalign-rna-fm", **asdict(self.config), **(extra or {})}, out / "config.json")
        atomic_write_json(preprocessing, out / "preprocessing.json")

    @classmethod
    def load(cls, path: str | Path) -> tuple["RNAFoundationModel", dict]:
        """Load a saved model (eval mode) and its preprocessing state."""
        from safetensors.torch import load_file

        path = Path(path)
        for name in ("model.safetensors", "config.json", "preprocessing.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: not an RNA foundation model folder (no {name}); run 'pathalign pretrain-rna'")
        cfg = json.loads((path / "config.json").read_text())
        fields = RNAFMConfig.__dataclass_fields__
        model = cls(RNAFMConfig(**{k: v for k, v in cfg.items() if k in fields}))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval(), json.loads((path / "preprocessing.json").read_text())
