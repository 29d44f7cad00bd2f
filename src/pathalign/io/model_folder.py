"""Model folders (DESIGN §3 Checkpoints): one save/load for every pathalign model kind.

A folder holds ``model.safetensors``, ``config.json`` and, for trained models, a model card
``README.md`` (Hub layout, loadable offline). ``config.json`` has these sections, and nothing
else::

    format_version  int, FORMAT_VERSION of the writer
    architecture    what the folder holds: "pathalign" (PathAlignModel) or "pathalign-rna-fm"
    model_args      the model's config dataclass, field by field
    preprocessing   per-modality transform states (molecular preprocessing), or {}
    training        {"config", "splits", "data", "metrics", "selection"} (each optional), or null;
                    selection: which training step the weights are from and why ({"step", "metric",
                    "value", "final_step", "reason", ...}; see pathalign.train.validation)
    patch_encoder   {"name", "feature_dim"} the slide features were made with, and their scale
                    ("target_magnification", "patch_size", "effective_magnification"; null where
                    unknown, absent in folders written before pathalign recorded it), or null

Unknown keys are an error at every level, with a message naming them. Old formats follow the one
policy of ``docs/choices.md``: a newer ``format_version`` is refused (upgrade pathalign); folders
written before the sections existed (a flat ``config.json`` with ``kind`` plus ``preprocessing.json``)
are converted on load by the caller's ``legacy`` function.

This module works on dicts and state dicts only; building a model from them is the model's
(:func:`pathalign.models.pathalign_model.load_model`, :meth:`pathalign.models.rna_fm.RNAFoundationModel.load`).
A folder is named by a local path or a Hub id (:func:`resolve_folder`, through :mod:`pathalign.io.hub`).

An RNA foundation model folder (``pathalign pretrain-rna``) also holds ``metrics.json`` (its held-out
metrics, as in ``training.metrics``) and ``patients.json`` (``{"split", "fitted_on", "left_out_val",
"notes"}``: the patients whose RNA it was fitted on, which ``train`` checks against its validation
patients); :func:`write_pretrain_records` writes them, :func:`read_fitted_patients` reads the list.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor

from .checkpoints import CheckpointError
from .hub import HubError, is_hub_id, parse_hub_id, resolve_source

# 1: the sections; 2 (pathalign 0.3): model_args.wsi_level and the patch_encoder scale keys, which a
# reader of format 1 refuses as unknown keys; a format-1 folder reads unchanged (the new keys take their defaults)
FORMAT_VERSION = 2
SECTIONS = ("format_version", "architecture", "model_args", "preprocessing", "training", "patch_encoder")
TRAINING_KEYS = ("config", "splits", "data", "metrics", "selection")
PATCH_ENCODER_KEYS = ("name", "feature_dim", "target_magnification", "patch_size", "effective_magnification")
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
PATIENTS, METRICS = "patients.json", "metrics.json"  # beside an RNA foundation model: see write_pretrain_records

T = TypeVar("T")


class ConfigError(CheckpointError):
    """A model folder or config that cannot be used; the message names the file and the keys."""


def check_keys(data: dict, known: Collection[str], where: str) -> None:
    """Raise :class:`ConfigError` naming every key of ``data`` not in ``known``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


def dataclass_from_dict(cls: type[T], data: dict, where: str) -> T:
    """``cls(**data)``, refusing unknown keys and turning a failed check into :class:`ConfigError`.

    Example:
        >>> from pathalign.models.rna_fm import RNAFMConfig
        >>> dataclass_from_dict(RNAFMConfig, {"n_genes": 10}, "config.json").dim
        256
    """
    check_keys(data, [f.name for f in dataclasses.fields(cls) if f.init], where)
    try:
        return cls(**data)
    except (TypeError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{where}: {msg}") from None


def read_json(path: str | Path) -> Any:
    """JSON from ``path``; an invalid file is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None


def make_config(architecture: str, model_args: dict, preprocessing: dict | None = None,
                training: dict | None = None, patch_encoder: dict | None = None) -> dict:
    """A ``config.json`` object in sections (checked as :func:`read_config` checks it)."""
    cfg = {"format_version": FORMAT_VERSION, "architecture": architecture, "model_args": model_args,
           "preprocessing": dict(preprocessing or {}), "training": training, "patch_encoder": patch_encoder}
    check_sections(cfg, CONFIG)
    return cfg


def check_sections(cfg: dict, where: str) -> None:
    """Check the top level and the fixed-key sections of a ``config.json`` object."""
    check_keys(cfg, SECTIONS, where)
    missing = [k for k in ("format_version", "architecture", "model_args") if k not in cfg]
    if missing:
        raise ConfigError(f"{where}: missing section(s) {missing}")
    if not isinstance(cfg["format_version"], int) or cfg["format_version"] > FORMAT_VERSION:
        raise ConfigError(f"{where}: format_version {cfg['format_version']!r} is newer than this pathalign "
                          f"reads ({FORMAT_VERSION}); upgrade pathalign")
    for name in ("model_args", "preprocessing"):  # their keys are checked by the model's config / transforms
        if not isinstance(cfg.get(name) or {}, dict):
            raise ConfigError(f"{where}: section {name!r} must be an object")
    if cfg.get("training") is not None:
        check_keys(cfg["training"], TRAINING_KEYS, f"{where} training")
    if cfg.get("patch_encoder") is not None:
        check_keys(cfg["patch_encoder"], PATCH_ENCODER_KEYS, f"{where} patch_encoder")


def save_folder(path: str | Path, state_dict: dict[str, Tensor], config: dict, card: str | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (and ``README.md`` when ``card``) into ``path``, each atomically."""
    from safetensors.torch import save_file

    from .atomic import atomic_path, atomic_write_json, atomic_write_text

    path = Path(path)
    check_sections(config, str(path / CONFIG))
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp))
    atomic_write_json(config, path / CONFIG)
    if card is not None:
        atomic_write_text(card, path / CARD)
    return path


def resolve_folder(name: str | os.PathLike) -> Path:
    """The local folder of a model named by a path or a Hub id (a local path wins; see :mod:`pathalign.io.hub`).

    Args:
        name: a model folder, or ``ORG/NAME`` / ``hf-hub:ORG/NAME[@revision]`` (its ``config.json``,
            ``model.safetensors`` and ``README.md`` are fetched, or taken from the Hub cache).

    Returns:
        The folder (a path that is not a Hub id is returned as it is, for :func:`read_config` to refuse).

    Example:
        >>> resolve_folder("hf-hub:my-lab/pathalign-tcga")  # doctest: +SKIP
        PosixPath('~/.cache/huggingface/hub/models--my-lab--pathalign-tcga/snapshots/3f2a…')
    """
    if not isinstance(name, str) or not is_hub_id(name):  # a Path object is a path
        return Path(name)
    try:
        return resolve_source(name, allow_patterns=[WEIGHTS, CONFIG, CARD, PATIENTS], what="a model folder")
    except HubError as e:
        if name.strip().lower().startswith(("hf-hub:", "hf_hub:")):  # spelled as a Hub id: the Hub is what failed
            raise ConfigError(f"{name}: cannot resolve on the Hugging Face Hub or in its cache ({e}); "
                              f"with HF_HUB_OFFLINE=1 the files must already be cached") from None
        # a bare ORG/NAME is also how a relative path is written ('run/model'): the missing folder is said first
        why = str(e)
        for prefix in (f"{name}: ", f"{parse_hub_id(name)[0]}: ", "no such local path, and "):
            why = why.removeprefix(prefix)
        raise ConfigError(f"{name}: no such local folder ({Path(name).absolute()}); not found as a Hub id "
                          f"ORG/NAME either: {why}") from None


def read_config(path: str | Path, architecture: str, legacy: Callable[[dict, Path], dict] | None = None,
                hint: str = "") -> dict:
    """The checked ``config.json`` of the folder ``path``, converted from the old flat layout if needed.

    Args:
        path: the model folder.
        architecture: the kind the caller can build; any other is refused.
        legacy: converts an old flat config (``kind`` at the top) of this architecture into sections.
        hint: what to run to make such a folder (added to "not a model folder" errors).
    """
    path = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise ConfigError(f"{path}: not a {architecture} model folder (no {name}){hint}")
    cfg = read_json(path / CONFIG)
    where = str(path / CONFIG)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected an object, got {type(cfg).__name__}")
    if "format_version" not in cfg and "kind" in cfg:  # written before config.json had sections
        if cfg["kind"] != architecture:
            raise ConfigError(f"{where}: holds a {cfg['kind']!r} model, not a {architecture!r} one{hint}")
        if legacy is None:
            raise ConfigError(f"{where}: old layout; re-save the model with this pathalign")
        cfg = legacy(cfg, path)
    check_sections(cfg, where)
    if cfg["architecture"] != architecture:
        raise ConfigError(f"{where}: holds a {cfg['architecture']!r} model, not a {architecture!r} one{hint}")
    return cfg


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of ``path/model.safetensors`` (a clear error naming the file if unreadable)."""
    from safetensors.torch import load_file

    f = Path(path) / WEIGHTS
    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001 - any reader failure, with the file name
        raise ConfigError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from None


def legacy_preprocessing(path: Path) -> dict:
    """``preprocessing.json`` of an old-layout folder ({} when absent)."""
    f = path / "preprocessing.json"
    return read_json(f) if f.is_file() else {}


def model_card(config: dict, name: str = "pathalign model") -> str:
    """A model card (``README.md``, Hub front matter) from a sectioned ``config.json`` object.

    States what a user must reproduce: the patch encoder and feature dim, the molecular
    preprocessing per modality, the training data summary and the metrics when given.
    """
    args = config["model_args"]
    pe = config.get("patch_encoder") or {}
    training = config.get("training") or {}
    lines = ["---", "library_name: pathalign", "tags:", "- pathology", "- multimodal", "- whole-slide-image", "---", "",
             f"# {name}", "",
             "A pathalign model: a whole-slide-image encoder aligned with molecular profiles "
             f"({', '.join(args['modalities'])}) in one embedding space (multimodal SigLIP loss).", "",
             "## Use", "", "```python", "import pathalign", "",
             'model = pathalign.load_model("path/or/hf-hub:ORG/NAME")',
             'rna = model.preprocess("rna", table)  # table: patients x genes, as in training',
             'z_rna = model.encode_molecular("rna", rna)', "```", "", "## Inputs it needs", ""]
    if "wsi" in args["modalities"]:
        lines.append(f"- **Slides**: patch features from the patch encoder `{pe.get('name') or 'unknown'}` "
                     f"({pe.get('feature_dim') or args['input_dims'].get('wsi')} dims), made with `pathalign "
                     f"preprocess --encoder {pe.get('name') or '<encoder>'}`. Features from another encoder are refused.")
        if pe.get("target_magnification") and pe.get("patch_size"):
            lines.append(f"- **Scale**: patches of {pe['patch_size']} px at {pe['target_magnification']:g}x "
                         f"(`--magnification {pe['target_magnification']:g} --patch-size {pe['patch_size']}`); "
                         "features at another scale are refused.")
    for m, state in sorted((config.get("preprocessing") or {}).items()):
        kind = state.get("kind", "?") if isinstance(state, dict) else "?"
        n = len(state.get("features", [])) if isinstance(state, dict) else 0
        extra = f", units {state['units']}" if isinstance(state, dict) and "units" in state else ""
        lines.append(f"- **{m}**: `{kind}` transform over {n} features{extra} (stored in config.json).")
    lines += ["", "## Architecture", "", "```json", json.dumps(args, indent=1, sort_keys=True), "```"]
    data = training.get("data")
    if data:
        lines += ["", "## Training data", ""] + [f"- {k}: {v}" for k, v in data.items()]
    tc = training.get("config")
    if tc:
        keys = ("preset", "steps", "batch_size", "lr", "max_tokens", "modality_dropout", "seed")
        lines += ["", "## Training", ""] + [f"- {k}: {tc[k]}" for k in keys if k in tc]
    sel = training.get("selection")
    if sel:
        value = f" = {sel['value']:.4g}" if isinstance(sel.get("value"), float) else ""
        lines += ["", "## Model selection", "",
                  f"Weights of training step {sel.get('step')} of {sel.get('final_step')}, selected by "
                  f"{sel.get('metric')}{value}: {sel.get('reason')}."]
    metrics = training.get("metrics")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def write_pretrain_records(folder: str | Path, metrics: dict, patients: dict) -> None:
    """Write ``metrics.json`` and ``patients.json`` into an RNA foundation model folder, atomically."""
    from .atomic import atomic_write_json

    atomic_write_json(metrics, Path(folder) / METRICS)
    atomic_write_json(patients, Path(folder) / PATIENTS)


def read_fitted_patients(folder: str | Path) -> set[str] | None:
    """The patients an RNA foundation model was fitted on (``patients.json``); None for a folder without one."""
    f = Path(folder) / PATIENTS
    return set(read_json(f).get("fitted_on", [])) if f.is_file() else None
