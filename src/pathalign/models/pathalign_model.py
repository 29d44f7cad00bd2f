"""``PathAlignModel``: slide encoder + molecular encoders + pair heads, from one config.

A preset (``model_configs/*.json``) fixes the architecture; input dims come from the data
(patch-feature dim from the features, molecular dims after preprocessing), so any patch
encoder works with any preset. Saved as a Hub-style folder: ``model.safetensors`` +
``config.json`` + ``preprocessing.json``; ``load_model(path)`` restores it offline.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from .molecular import FrozenFMEncoder, MLPEncoder
from .rna_fm import RNAFMConfig, RNAFoundationModel
from .pair_heads import PairHeads, PairProjection
from .slide_encoder import SLIDE_ENCODER_PRESETS, SlideEncoder, SlideEncoderConfig

MOLECULAR = ("rna", "snp", "cnv", "methylation")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("pathalign.model_configs").iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict:
    """The JSON preset ``name`` (``model_configs/<name>.json``) as a dict."""
    path = resources.files("pathalign.model_configs") / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(preset_names())}")
    return json.loads(path.read_text())


@dataclass
class PathAlignConfig:
    """Architecture of a :class:`PathAlignModel` (input dims included, once known from the data)."""

    modalities: list[str]
    input_dims: dict[str, int]
    slide_encoder: dict = field(default_factory=lambda: {"preset": "tiny"})
    embed_dim: int = 256
    proj_dim: int = 256
    mol_depth: int = 1
    dropout: float = 0.1
    pair_adapters: bool = True
    balance: str = "siglip"
    shared_temperature: bool = False
    pairs: list[list[str]] | None = None
    rna_encoder: str = "mlp"  # "mlp" on preprocessed RNA, or "frozen_fm" (pathalign's RNA foundation model)
    rna_fm: dict | None = None

    def __post_init__(self):
        unknown = set(self.modalities) - {"wsi", *MOLECULAR}
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}")
        if len(self.modalities) < 2:
            raise ValueError(f"training needs at least two modalities, got {self.modalities}")
        missing = [m for m in self.modalities if m not in self.input_dims]
        if missing:
            raise ValueError(f"no input dim for {missing}")
        if self.rna_encoder not in ("mlp", "frozen_fm"):
            raise ValueError(f"rna_encoder must be mlp or frozen_fm, got {self.rna_encoder!r}")

    def slide_encoder_config(self) -> SlideEncoderConfig:
        opts = dict(self.slide_encoder)
        base = SLIDE_ENCODER_PRESETS.get(opts.pop("preset", "tiny"))
        opts["input_dim"] = self.input_dims["wsi"]
        return base.replace(**opts)

    @classmethod
    def from_preset(cls, name: str, modalities: list[str], input_dims: dict[str, int], **overrides) -> "PathAlignConfig":
        preset = load_preset(name)
        fields = {k: v for k, v in preset.items() if k in cls.__dataclass_fields__}
        fields.update(overrides)
        return cls(modalities=modalities, input_dims=input_dims, **fields)


class PathAlignModel(nn.Module):
    """Encoders of every modality and the pair heads (adapters, temperatures, biases).

    The loss is not part of the model: :class:`~pathalign.models.siglip.MultimodalSigLIPLoss`
    takes what :meth:`forward` returns.
    """

    def __init__(self, config: PathAlignConfig):
        super().__init__()
        self.config = config
        self.slide_encoder = SlideEncoder(config.slide_encoder_config()) if "wsi" in config.modalities else None
        self.encoders = nn.ModuleDict()
        for m in config.modalities:
            if m == "wsi":
                continue
            if m == "rna" and config.rna_encoder == "frozen_fm":
                fm = RNAFoundationModel(RNAFMConfig(**config.rna_fm))
                self.encoders[m] = FrozenFMEncoder(fm, config.embed_dim, config.mol_depth, config.dropout)
            else:
                self.encoders[m] = MLPEncoder(config.input_dims[m], config.embed_dim, config.mol_depth, config.dropout)
        dims = {m: (self.slide_encoder.config.output_dim if m == "wsi" else config.embed_dim) for m in config.modalities}
        self.pair_heads = PairHeads(dims, config.proj_dim, config.pair_adapters, config.shared_temperature, config.pairs)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    def output_dim(self, modality: str) -> int:
        return self.pair_heads.dims[modality]

    # ------------------------------------------------------------------ encoders
    def encode_slide(self, slides, mpps=None) -> Tensor:
        """Slide embeddings ``[S, D_wsi]`` of ``[(features, coords, fragment), ...]`` (one packed pass)."""
        if self.slide_encoder is None:
            raise KeyError("this model has no slide encoder (trained without WSI)")
        return torch.stack([o["slide_embedding"] for o in self.slide_encoder.encode_batch(slides, mpps)])

    def encode_molecular(self, modality: str, x: Tensor) -> Tensor:
        if modality not in self.encoders:
            raise KeyError(f"this model has no {modality} encoder; it has {list(self.encoders)}")
        return self.encoders[modality](x.float())

    def encode_rna(self, x: Tensor) -> Tensor:
        return self.encode_molecular("rna", x)

    def encode_snp(self, x: Tensor) -> Tensor:
        return self.encode_molecular("snp", x)

    def encode_cnv(self, x: Tensor) -> Tensor:
        return self.encode_molecular("cnv", x)

    def encode_methylation(self, x: Tensor) -> Tensor:
        return self.encode_molecular("methylation", x)

    def similarity(self, mod_a: str, emb_a: Tensor, mod_b: str, emb_b: Tensor) -> Tensor:
        """Cosine similarity ``[n_a, n_b]`` in the space the pair (a, b) shares, through the pair adapters."""
        return self.pair_heads.similarity(mod_a, emb_a, mod_b, emb_b)

    def embed_batch(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Embeddings ``[B, d]`` and validity ``[B]`` per modality of a training batch.

        ``batch``: ``valid`` (dict of bool [B]), ``slides`` (list of (features, coords, fragment) for the
        rows in ``slide_rows``), and one float tensor [B, d_in] per molecular modality.
        """
        valid = {m: batch["valid"][m] for m in self.modalities}
        b = next(iter(valid.values())).shape[0]
        emb = {}
        for m in self.modalities:
            if m == "wsi":
                out = torch.zeros(b, self.output_dim("wsi"), device=self._device())
                rows = batch["slide_rows"]
                if len(rows):
                    out = out.index_copy(0, rows.to(out.device), self.encode_slide(batch["slides"]).to(out.dtype))
                emb[m] = out
            else:
                emb[m] = self.encode_molecular(m, batch[m].to(self._device()))
        return emb, {m: v.to(self._device()) for m, v in valid.items()}

    def forward(self, batch: dict | None = None, *, embeddings: dict[str, Tensor] | None = None,
                valid: dict[str, Tensor] | None = None, project: bool = True):
        """A training batch through the encoders and/or the pair heads.

        Three uses (all through ``forward`` so that a DDP wrapper sees every parameter):

        - ``model(batch)``: :meth:`embed_batch` then the pair heads -> ``list[PairProjection]``
          (what :class:`~pathalign.models.siglip.MultimodalSigLIPLoss` takes);
        - ``model(batch, project=False)``: the encoders only -> ``(embeddings, valid)``;
        - ``model(embeddings=emb, valid=valid)``: the pair heads only -> ``list[PairProjection]``
          (e.g. on embeddings computed micro-batch by micro-batch, for gradient caching).
        """
        if batch is not None:
            if embeddings is not None:
                raise ValueError("give a batch or embeddings, not both")
            embeddings, valid = self.embed_batch(batch)
            if not project:
                return embeddings, valid
        elif embeddings is None or valid is None:
            raise ValueError("give a batch, or embeddings and valid")
        return self.project_pairs(embeddings, valid)

    def project_pairs(self, embeddings: dict[str, Tensor], valid: dict[str, Tensor]) -> list[PairProjection]:
        """The pair heads on per-modality embeddings ``[B, d_m]`` and validity ``[B]``."""
        return self.pair_heads(embeddings, valid)

    def _device(self):
        return next(self.parameters()).device

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, preprocessing: dict, extra: dict | None = None) -> None:
        """Write ``model.safetensors``, ``config.json`` and ``preprocessing.json`` to ``path`` (atomically each)."""
        from safetensors.torch import save_file

        from ..io.atomic import atomic_path, atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "model.safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        atomic_write_json({"kind": "pathalign", **asdict(self.config), **(extra or {})}, path / "config.json")
        atomic_write_json(preprocessing, path / "preprocessing.json")


def load_model(path: str | Path) -> PathAlignModel:
    """A saved :class:`PathAlignModel` in eval mode (``.preprocessing`` holds the transforms' state)."""
    from safetensors.torch import load_file

    path = Path(path)
    for name in ("model.safetensors", "config.json", "preprocessing.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not a pathalign model folder (no {name})")
    cfg = json.loads((path / "config.json").read_text())
    fields = {k: v for k, v in cfg.items() if k in PathAlignConfig.__dataclass_fields__}
    model = PathAlignModel(PathAlignConfig(**fields))
    try:
        model.load_state_dict(upgrade_state_dict(load_file(str(path / "model.safetensors"))))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path / 'model.safetensors'}: cannot load weights ({type(e).__name__}: {e})") from None
    model.preprocessing = json.loads((path / "preprocessing.json").read_text())
    model.extra = {k: v for k, v in cfg.items() if k not in fields}
    return model.eval()


_RENAMED_PREFIXES = {"loss.": "pair_heads."}  # pathalign <= 0.1 kept the pair heads in the loss


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of an older pathalign layout with today's key names (others unchanged).

    Models saved before the pair heads moved into the model hold ``loss.adapters.*``,
    ``loss.log_t.*`` and ``loss.bias.*``; they are ``pair_heads.*`` now.
    """
    out = {}
    for key, value in state.items():
        for old, new in _RENAMED_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
