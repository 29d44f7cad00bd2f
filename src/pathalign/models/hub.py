"""Model folders on the Hugging Face Hub: ``hf-hub:ORG/NAME`` ids, upload, and the model card.

Resolution goes through ``huggingface_hub`` (its cache, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_TOKEN`` for gated or private repositories); nothing is downloaded when the files are cached.
"""
from __future__ import annotations

import json
from pathlib import Path

from .model_folder import CONFIG, WEIGHTS, ConfigError

HUB_PREFIX = "hf-hub:"


def is_hub_id(name: str | Path) -> bool:
    """True for ``"hf-hub:ORG/NAME"`` (optionally ``@revision``)."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def resolve_hub_folder(name: str, files: tuple[str, ...] = (WEIGHTS, CONFIG)) -> Path:
    """The local snapshot folder of ``hf-hub:ORG/NAME[@revision]`` holding ``files``.

    Args:
        name: the id, with the ``hf-hub:`` prefix.
        files: the files the folder must provide (fetched into the cache if missing and online).

    Returns:
        The snapshot folder in the Hugging Face cache.

    Example:
        >>> resolve_hub_folder("hf-hub:my-lab/pathalign-tcga")  # doctest: +SKIP
        PosixPath('~/.cache/huggingface/hub/models--my-lab--pathalign-tcga/snapshots/3f2a…')
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError(f"{name}: loading from the Hub needs huggingface_hub (pip install huggingface_hub)") from None
    repo, _, revision = name[len(HUB_PREFIX):].partition("@")
    if repo.count("/") != 1:
        raise ConfigError(f"{name}: a Hub id is hf-hub:ORG/NAME")
    try:
        folder = snapshot_download(repo, revision=revision or None, allow_patterns=[*files, "README.md"])
    except Exception as e:  # noqa: BLE001 - offline/missing/gated: one clear message
        raise ConfigError(f"{name}: cannot resolve on the Hugging Face Hub or in its cache "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          f"with HF_HUB_OFFLINE=1 the files must already be cached") from None
    return Path(folder)


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload pathalign model") -> str:
    """Upload a saved model folder to the Hub repository ``repo_id`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return f"https://huggingface.co/{repo_id}"


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
