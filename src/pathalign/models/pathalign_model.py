"""``PathAlignModel``: slide encoder + molecular encoders + pair heads, from one config.

A preset (:mod:`.presets`) fixes the architecture; input dims come from the data
(patch-feature dim from the features, molecular dims after preprocessing), so any patch
encoder works with any preset. Saved as a Hub-style folder (:mod:`pathalign.io.model_folder`):
``model.safetensors`` + ``config.json`` (sections) + a model card ``README.md``;
``load_model(path or "hf-hub:ORG/NAME")`` restores it offline.

Example:
    >>> import pathalign
    >>> model = pathalign.create_model("tiny", modalities=["wsi", "rna"], input_dims={"wsi": 46, "rna": 20})
    >>> model.output_dim("rna")
    64
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..io import hub
from ..io.model_folder import (
    ConfigError,
    check_keys,
    dataclass_from_dict,
    legacy_preprocessing,
    make_config,
    model_card,
    read_config,
    read_weights,
    resolve_folder,
    save_folder,
)
from ..modalities import MOLECULAR, WSI, check_modalities
from .molecular import MOLECULAR_ENCODERS
from .pair_heads import PairHeads, PairProjection
from .preprocessing import TRANSFORMS
from .presets import MODEL_PRESETS
from .siglip import BALANCES
from .slide_encoder import SlideEncoder
from .slide_encoder_config import SLIDE_ENCODER_PRESETS, SlideEncoderConfig

ARCHITECTURE = "pathalign"
WSI_LEVELS = ("slide", "patient")  # what the slide encoder reads as one sequence: a slide, or all of a patient's
MOLECULAR_DEFAULT_ENCODER = "mlp"


def load_preset(name: str) -> dict:
    """The model preset ``name`` as a dict: ``description``, the :class:`PathAlignConfig` fields, ``train``."""
    p = MODEL_PRESETS.get(name)
    return {"description": p.description, **p.model_fields(), "train": dict(p.train)}


@dataclass(frozen=True)
class PathAlignConfig:
    """Architecture of a :class:`PathAlignModel` (input dims included, once known from the data).

    Attributes:
        modalities: modalities the model encodes (``wsi`` and/or molecular layers), at least two.
        input_dims: input dim per modality (patch-feature dim for ``wsi``; preprocessed columns otherwise).
        slide_encoder: ``{"preset": name, **overrides}`` of ``SLIDE_ENCODER_PRESETS`` fields.
        embed_dim, mol_depth, dropout: molecular encoders.
        input_noise: SD of the Gaussian noise on the molecular encoders' (standardised) inputs in training.
        proj_dim, pair_adapters, shared_temperature, pairs: pair heads (:class:`PairHeads`).
        balance: loss balance (``"siglip"`` or ``"pos_neg"``), recorded for training.
        rna_encoder: ``MOLECULAR_ENCODERS`` entry for RNA (``"mlp"`` or ``"frozen_fm"``).
        rna_fm: the RNA foundation model's config (``frozen_fm`` only).
        wsi_level: ``"slide"`` (one sequence per slide; a patient's slides are averaged at inference) or
            ``"patient"`` (all of a patient's slides packed as one sequence, :meth:`PathAlignModel.encode_patient`).
            A config saved without it (older models) is ``"slide"``.
    """

    modalities: list[str]
    input_dims: dict[str, int]
    slide_encoder: dict = field(default_factory=lambda: {"preset": "tiny"})
    embed_dim: int = 256
    proj_dim: int = 256
    mol_depth: int = 1
    dropout: float = 0.1
    input_noise: float = 0.0
    pair_adapters: bool = True
    balance: str = "siglip"
    shared_temperature: bool = False
    pairs: list[list[str]] | None = None
    rna_encoder: str = MOLECULAR_DEFAULT_ENCODER
    rna_fm: dict | None = None
    wsi_level: str = "slide"

    def __post_init__(self):
        check_modalities(self.modalities, "PathAlignConfig.modalities")
        if len(self.modalities) < 2:
            raise ValueError(f"training needs at least two modalities, got {self.modalities}")
        missing = [m for m in self.modalities if m not in self.input_dims]
        if missing:
            raise ValueError(f"no input dim for {missing}")
        MOLECULAR_ENCODERS.get(self.rna_encoder)
        if self.rna_encoder == "frozen_fm" and not self.rna_fm:
            raise ValueError("rna_encoder='frozen_fm' needs rna_fm (the RNA foundation model's config)")
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {self.balance!r}")
        if self.wsi_level not in WSI_LEVELS:
            raise ValueError(f"wsi_level must be one of {WSI_LEVELS}, got {self.wsi_level!r}")
        if WSI in self.modalities:
            self.slide_encoder_config()  # unknown or bad slide-encoder settings fail here

    def slide_encoder_config(self) -> SlideEncoderConfig:
        """The slide encoder's config: its preset with this config's overrides and input dim."""
        opts = dict(self.slide_encoder)
        base = SLIDE_ENCODER_PRESETS.get(opts.pop("preset", "tiny"))
        opts["input_dim"] = self.input_dims[WSI]
        return base.replace(**opts)

    def encoder_kind(self, modality: str) -> str:
        """The ``MOLECULAR_ENCODERS`` entry that encodes ``modality``."""
        return self.rna_encoder if modality == "rna" else MOLECULAR_DEFAULT_ENCODER

    def replace(self, **changes: Any) -> "PathAlignConfig":
        """A checked copy with ``changes``."""
        check_keys(changes, [f.name for f in dataclasses.fields(self)], "PathAlignConfig.replace")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields, the slide encoder fully resolved (a saved model never depends on a preset)."""
        d = asdict(self)
        if WSI in self.modalities:
            enc = asdict(self.slide_encoder_config())
            enc.pop("input_dim")
            d["slide_encoder"] = enc
        return d

    @classmethod
    def from_preset(cls, name: str, modalities: Sequence[str], input_dims: dict[str, int],
                    **overrides: Any) -> "PathAlignConfig":
        """The preset ``name`` (``MODEL_PRESETS``) for these modalities and input dims, with ``overrides``."""
        fields = MODEL_PRESETS.get(name).model_fields()
        fields.update(overrides)
        fields.update(modalities=list(modalities), input_dims=dict(input_dims))
        return dataclass_from_dict(cls, fields, f"model settings (preset {name!r})")


class PathAlignModel(nn.Module):
    """Encoders of every modality and the pair heads (adapters, temperatures, biases).

    The loss is not part of the model: :class:`~pathalign.models.siglip.MultimodalSigLIPLoss`
    takes what :meth:`forward` returns.

    Args:
        config: the architecture.
        preprocessing: per-modality molecular transform states (see :meth:`transform`).
        patch_encoder: ``{"name", "feature_dim"}`` of the patch features the slide encoder was trained on, and
            their scale (``target_magnification``, ``patch_size``, ``effective_magnification``; see
            :meth:`check_features_scale`).
        training: ``{"config", "splits", "data", "metrics"}`` of the training run (saved in the model card).

    Example:
        >>> model = PathAlignModel(PathAlignConfig(["rna", "snp"], {"rna": 20, "snp": 8}, embed_dim=16, proj_dim=8))
        >>> z = model.encode_molecular("rna", torch.randn(3, 20))
        >>> model.similarity("rna", z, "snp", model.encode_molecular("snp", torch.randn(4, 8))).shape
        torch.Size([3, 4])
    """

    def __init__(self, config: PathAlignConfig, preprocessing: dict | None = None,
                 patch_encoder: dict | None = None, training: dict | None = None):
        super().__init__()
        self.config = config
        self.preprocessing: dict = dict(preprocessing or {})
        self.patch_encoder: dict | None = dict(patch_encoder) if patch_encoder else None
        self.training_info: dict | None = dict(training) if training else None
        self.slide_encoder = SlideEncoder(config.slide_encoder_config()) if WSI in config.modalities else None
        self.encoders = nn.ModuleDict()
        for m in config.modalities:
            if m == WSI:
                continue
            kind = config.encoder_kind(m)
            options = {"fm_config": config.rna_fm} if kind == "frozen_fm" else {}
            if config.input_noise:
                options["input_noise"] = config.input_noise
            self.encoders[m] = MOLECULAR_ENCODERS.get(kind).build(config.input_dims[m], config.embed_dim,
                                                                  config.mol_depth, config.dropout, **options)
        dims = {m: (self.slide_encoder.config.output_dim if m == WSI else config.embed_dim) for m in config.modalities}
        self.pair_heads = PairHeads(dims, config.proj_dim, config.pair_adapters, config.shared_temperature, config.pairs)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    def output_dim(self, modality: str) -> int:
        """Dim of ``modality``'s embedding (before the pair heads)."""
        return self.pair_heads.dims[modality]

    # ------------------------------------------------------------------ encoders
    def encode_slide(self, slides: Sequence[tuple], mpps: Sequence[float | None] | None = None,
                     names: Sequence[str] | None = None) -> Tensor:
        """Slide embeddings ``[S, D_wsi]`` of ``[(features, coords, fragment), ...]`` (one packed pass);
        ``names`` (slide ids) are named in input errors."""
        if self.slide_encoder is None:
            raise KeyError("this model has no slide encoder (trained without WSI)")
        return self.slide_encoder(slides, mpps, names)

    def encode_patient(self, patients: Sequence[Sequence[tuple]], mpps: Sequence[Sequence[float | None]] | None = None,
                       names: Sequence[Sequence[str]] | None = None) -> Tensor:
        """Patient embeddings ``[B, D_wsi]``: each patient's slides ``[(features, coords, fragment), ...]`` packed
        as one sequence (see :meth:`SlideEncoder.encode_patients`); ``names`` (slide ids) are named in input errors."""
        if self.slide_encoder is None:
            raise KeyError("this model has no slide encoder (trained without WSI)")
        return self.slide_encoder.forward_patients(patients, mpps, names)

    def encode_molecular(self, modality: str, x: Tensor) -> Tensor:
        """Embeddings ``[B, embed_dim]`` of preprocessed molecular inputs ``x`` ``[B, input_dims[modality]]``."""
        if modality not in self.encoders:
            raise KeyError(f"this model has no {modality} encoder; it has {list(self.encoders)}")
        return self.encoders[modality](x.float())

    # Deprecated aliases, kept for one release: model cards written by pathalign 0.2.0 and earlier show
    # ``model.encode_rna(rna)``.
    def _deprecated_encode(self, modality: str, x: Tensor) -> Tensor:
        warnings.warn(f"PathAlignModel.encode_{modality}(x) is deprecated and will be removed in the next release; "
                      f"use encode_molecular({modality!r}, x)", DeprecationWarning, stacklevel=3)
        return self.encode_molecular(modality, x)

    def encode_rna(self, x: Tensor) -> Tensor:
        """Deprecated: ``encode_molecular("rna", x)``."""
        return self._deprecated_encode("rna", x)

    def encode_snp(self, x: Tensor) -> Tensor:
        """Deprecated: ``encode_molecular("snp", x)``."""
        return self._deprecated_encode("snp", x)

    def encode_cnv(self, x: Tensor) -> Tensor:
        """Deprecated: ``encode_molecular("cnv", x)``."""
        return self._deprecated_encode("cnv", x)

    def encode_methylation(self, x: Tensor) -> Tensor:
        """Deprecated: ``encode_molecular("methylation", x)``."""
        return self._deprecated_encode("methylation", x)

    def similarity(self, mod_a: str, emb_a: Tensor, mod_b: str, emb_b: Tensor) -> Tensor:
        """Cosine similarity ``[n_a, n_b]`` in the space the pair (a, b) shares, through the pair heads."""
        return self.pair_heads.similarity(mod_a, emb_a, mod_b, emb_b)

    # ------------------------------------------------------------------ preprocessing
    def transform(self, modality: str) -> Any:
        """The fitted molecular transform of ``modality`` (``TRANSFORMS``), as saved with the model."""
        if modality not in self.preprocessing:
            raise KeyError(f"this model has no preprocessing for {modality!r}; it has {sorted(self.preprocessing)}")
        state = self.preprocessing[modality]
        if not isinstance(state, dict) or "kind" not in state:
            raise ConfigError(f"bad preprocessing state for {modality!r}")
        return TRANSFORMS.get(state["kind"]).from_state_dict(state)

    def preprocess(self, modality: str, table: pd.DataFrame) -> Tensor:
        """Model inputs ``float32 [n, input_dims[modality]]`` of a raw table (rows = patients, columns = features).

        Example:
            >>> x = model.preprocess("rna", tpm_table)  # doctest: +SKIP
            >>> z = model.encode_molecular("rna", x)  # doctest: +SKIP
        """
        return torch.from_numpy(np.ascontiguousarray(self.transform(modality).transform(table)))

    def check_patch_encoder(self, encoder: str | None, where: str = "features") -> None:
        """Refuse patch features made by another patch encoder than the one this model was trained on.

        Args:
            encoder: the ``encoder`` attribute of the features file(s) (None: unknown, accepted).
            where: the file or folder named in the error.
        """
        trained = (self.patch_encoder or {}).get("name")
        if trained and encoder and str(encoder) != trained:
            raise ConfigError(f"{where}: patch features from encoder {encoder!r}, but this model was trained on "
                              f"{trained!r} features; extract them with 'pathalign preprocess --encoder {trained}'")

    def check_features_scale(self, contracts: dict[str, dict], where: str = "features") -> None:
        """Refuse patch features at another scale than the one this model was trained at.

        The rule of a features folder, against the model's record: ``target_magnification`` and
        ``patch_size`` equal where both are known, the effective magnification within
        ``EFFECTIVE_TOLERANCE`` (see :mod:`pathalign.io.features_contract`). A model saved without
        the record (older pathalign) is not checked.

        Args:
            contracts: ``{slide_id: file_contract(...)}`` of the files (``check_features_folder``'s result).
            where: the file or folder named in the error.

        Raises:
            ContractError: naming ``where``, the slides and values found and the model's values.
        """
        from ..io.features_contract import check_model_scale

        check_model_scale(self.patch_encoder, contracts, where)

    # ------------------------------------------------------------------ training interface
    def embed_batch(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Embeddings ``[B, d]`` and validity ``[B]`` per modality of a training batch.

        ``batch``: ``valid`` (dict of bool [B]), ``slides`` (list of (features, coords, fragment) for the
        rows in ``slide_rows``; with ``wsi_level="patient"`` one list of such slides per row), and one
        float tensor [B, d_in] per molecular modality.
        """
        valid = {m: batch["valid"][m] for m in self.modalities}
        b = next(iter(valid.values())).shape[0]
        emb = {}
        for m in self.modalities:
            if m == WSI:
                out = torch.zeros(b, self.output_dim(WSI), device=self._device())
                rows = batch["slide_rows"]
                if len(rows):
                    encode = self.encode_patient if self.config.wsi_level == "patient" else self.encode_slide
                    z = encode(batch["slides"], names=batch.get("slide_ids"))
                    out = out.index_copy(0, rows.to(out.device, non_blocking=True), z.to(out.dtype))
                emb[m] = out
            else:
                emb[m] = self.encode_molecular(m, batch[m].to(self._device()))
        return emb, {m: v.to(self._device(), non_blocking=True) for m, v in valid.items()}  # no host wait

    def forward(self, batch: dict | None = None, *, embeddings: dict[str, Tensor] | None = None,
                valid: dict[str, Tensor] | None = None,
                project: bool = True) -> list[PairProjection] | tuple[dict[str, Tensor], dict[str, Tensor]]:
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

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ persistence
    def export_config(self, metrics: dict | None = None) -> dict:
        """The ``config.json`` object of this model (sections; see :mod:`pathalign.io.model_folder`)."""
        training = dict(self.training_info or {})
        if metrics:
            training["metrics"] = {**training.get("metrics", {}), **metrics}
        return make_config(ARCHITECTURE, self.config.to_dict(), self.preprocessing, training or None,
                           self.patch_encoder)

    def save_pretrained(self, path: str | Path, metrics: dict | None = None, name: str | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json`` and the model card ``README.md`` into ``path``.

        Args:
            path: the folder (created; each file written atomically).
            metrics: evaluation results to record in the config and the model card.
            name: the model's name in the card (default: the folder name).

        Example:
            >>> model.save_pretrained("runs/tcga/model", metrics={"wsi-rna recall@5": 0.41})  # doctest: +SKIP
            >>> pathalign.load_model("runs/tcga/model")  # doctest: +SKIP
        """
        config = self.export_config(metrics)
        return save_folder(path, self.state_dict(), config, model_card(config, name or Path(path).name))

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = False,
                    metrics: dict | None = None, commit_message: str = "Upload pathalign model") -> str:
        """Save the model (as :meth:`save_pretrained`) and upload it to the Hub repository ``repo_id``.

        Returns:
            The repository URL. Load it back with ``pathalign.load_model("hf-hub:" + repo_id)``.
        """
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "model", metrics=metrics, name=repo_id.split("/")[-1])
            return hub.push_folder(Path(tmp) / "model", repo_id, token, private, commit_message)


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


def _legacy_config(flat: dict, path: Path) -> dict:
    """A flat pathalign <= 0.1 ``config.json`` (+ ``preprocessing.json``) in today's sections."""
    flat = {k: v for k, v in flat.items() if k != "kind"}
    names = {f.name for f in dataclasses.fields(PathAlignConfig)}
    model_args = {k: flat.pop(k) for k in list(flat) if k in names}
    training = {new: flat.pop(old) for old, new in (("train_config", "config"), ("splits", "splits")) if old in flat}
    feature_dim = flat.pop("features_dim", None)
    check_keys(flat, [], f"{path / 'config.json'} (old layout)")
    pe = {"name": None, "feature_dim": feature_dim} if feature_dim is not None else None
    return make_config(ARCHITECTURE, model_args, legacy_preprocessing(path), training or None, pe)


def read_model_config(path: str | Path) -> tuple[Path, dict]:
    """The local folder of a saved model (a folder or a Hub id) and its checked ``config.json`` sections.

    Folders of older pathalign versions are converted as :func:`load_model` converts them.

    Raises:
        ConfigError: not a pathalign model folder, or an unreadable or unknown config.
    """
    folder = resolve_folder(path)
    return folder, read_config(folder, ARCHITECTURE, _legacy_config, hint="; train one with 'pathalign train'")


def load_model(path: str | Path) -> PathAlignModel:
    """A saved :class:`PathAlignModel` in eval mode, from a folder or a Hub id (``ORG/NAME`` or
    ``"hf-hub:ORG/NAME[@revision]"``; an existing local path wins).

    Folders written by older pathalign versions (flat ``config.json``, ``preprocessing.json``,
    ``loss.*`` weights) are converted on load; ``save_pretrained`` writes them in today's layout.

    Example:
        >>> model = pathalign.load_model("hf-hub:my-lab/pathalign-tcga")  # doctest: +SKIP
        >>> model.patch_encoder["name"]  # doctest: +SKIP
        'exaone-path-2.5'
    """
    folder, cfg = read_model_config(path)
    where = folder / "config.json"
    config = dataclass_from_dict(PathAlignConfig, cfg["model_args"], f"{where} model_args")
    model = PathAlignModel(config, cfg.get("preprocessing"), cfg.get("patch_encoder"), cfg.get("training"))
    try:
        model.load_state_dict(upgrade_state_dict(read_weights(folder)))
    except RuntimeError as e:
        raise ConfigError(f"{folder / 'model.safetensors'}: weights do not fit config.json ({str(e)[:300]})") from None
    return model.eval()


def create_model(name_or_path: str | Path, modalities: Sequence[str] | None = None,
                 input_dims: dict[str, int] | None = None, **overrides: Any) -> PathAlignModel:
    """A model from a preset name (randomly initialised) or a saved one (path or ``hf-hub:`` id).

    Args:
        name_or_path: a name in :func:`list_models`, a model folder, or ``"hf-hub:ORG/NAME"``.
        modalities, input_dims: required for a preset (input dims come from the data).
        **overrides: :class:`PathAlignConfig` fields to change in the preset.

    Example:
        >>> m = create_model("tiny", modalities=["wsi", "rna"], input_dims={"wsi": 46, "rna": 30})
        >>> sorted(m.encoders)
        ['rna']
    """
    if isinstance(name_or_path, str) and name_or_path in MODEL_PRESETS:
        if modalities is None or input_dims is None:
            raise ValueError(f"create_model({name_or_path!r}) builds a new model: give modalities and input_dims")
        return PathAlignModel(PathAlignConfig.from_preset(name_or_path, modalities, input_dims, **overrides))
    if (isinstance(name_or_path, str) and hub.is_hub_id(name_or_path)) or Path(name_or_path).is_dir():
        if overrides:
            raise ValueError(f"{name_or_path}: a saved model cannot take overrides {sorted(overrides)}")
        return load_model(name_or_path)
    raise KeyError(f"{name_or_path!r} is neither a model preset ({', '.join(MODEL_PRESETS.names())}), "
                   f"a model folder nor an hf-hub: id")


def list_models() -> list[str]:
    """Names of the model presets :func:`create_model` builds.

    Example:
        >>> list_models()
        ['exaone-path-2.5', 'molecular', 'small', 'tiny']
    """
    return MODEL_PRESETS.names()


__all__ = ["ARCHITECTURE", "MOLECULAR", "WSI_LEVELS", "PathAlignConfig", "PathAlignModel", "create_model",
           "list_models", "load_model", "load_preset", "upgrade_state_dict"]
