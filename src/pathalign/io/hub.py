"""Hugging Face Hub ids → local files, through ``huggingface_hub``'s cache: the one resolver of every
``--weights``, patch/slide encoder and model folder (:func:`pathalign.io.model_folder.resolve_folder`).

The rule (timm's ``parse_model_name``, widened to bare ids as every ``--weights`` takes them): a path
that exists is a local file or folder; otherwise ``ORG/NAME`` or ``hf-hub:ORG/NAME`` (``hf_hub:`` too),
each with an optional ``@revision``, is a Hub repository; anything else is a missing path.

``resolve_source("LGAI-EXAONE/EXAONE-Path-2.5", subfolder="patch-encoder")`` returns the local
folder of that subfolder in the Hub cache (``HF_HUB_CACHE`` / ``HF_HOME``), downloading what is
missing when the Hub is reachable. ``HF_HUB_OFFLINE=1`` uses the cache only; gated models
(UNI, Virchow2, ...) use the token of ``HF_TOKEN`` or ``huggingface-cli login``. An existing
local path is returned as it is, so every ``--weights`` option accepts both.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import PathalignError

# ORG/NAME, optionally "hf-hub:" in front (timm / open_clip spelling) and "@revision" behind
_HUB_ID = re.compile(r"^(?:hf[-_]hub:)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$")


class HubError(PathalignError, OSError):
    """A Hub id that cannot be resolved (not cached while offline, gated, unknown)."""


_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5")  # a path, never a repository name


def parse_hub_id(source: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``source`` is spelled as a Hub id, else ``None``."""
    m = _HUB_ID.match(str(source).strip())
    if not m or m.group(1).lower().endswith(_FILE_SUFFIXES):
        return None
    return m.group(1), m.group(2)


def is_hub_id(source: str | os.PathLike) -> bool:
    """True when ``source`` is not an existing local path and is spelled ``ORG/NAME``."""
    return not Path(source).exists() and parse_hub_id(str(source)) is not None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (1/ON/YES/TRUE), read at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> str | None:
    """The Hub cache as huggingface_hub finds it, read at call time: ``HF_HUB_CACHE``, else ``HF_HOME/hub``,
    else None (the library's default, ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def resolve_source(source: str | os.PathLike, subfolder: str | None = None,
                   allow_patterns: list[str] | None = None, what: str = "weights") -> Path:
    """A local path for ``source`` (a local file/folder, or a Hub id).

    Args:
        source: a local path, or ``ORG/NAME`` (``hf-hub:ORG/NAME``, ``ORG/NAME@revision``).
        subfolder: for a Hub id, the folder inside the repository to return (e.g. ``patch-encoder``);
            only its files are fetched.
        allow_patterns: for a Hub id without ``subfolder``, the files to fetch (default: all).
        what: what is being resolved, for error messages.

    Returns:
        The local path: ``source`` itself when it exists, else ``<snapshot>/<subfolder>``.

    Raises:
        HubError: not a local path and not resolvable on the Hub / in its cache.
    """
    path = Path(source)
    if path.exists():
        return path
    parsed = parse_hub_id(str(source))
    if parsed is None:
        raise HubError(f"{source}: no such file or folder (and not a Hub id ORG/NAME) for {what}")
    repo_id, revision = parsed
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [f"{subfolder}/*"] if subfolder else allow_patterns
    offline = hub_offline()
    try:
        # the environment is read now (huggingface_hub reads it once, at import); the token is its own
        folder = Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns,
                                        cache_dir=hub_cache_dir(), local_files_only=offline))
    except GatedRepoError:
        raise HubError(f"{repo_id}: gated model — accept its licence on https://huggingface.co/{repo_id} and log in "
                       f"(huggingface-cli login, or set HF_TOKEN), or pass a local copy of the {what}") from None
    except RepositoryNotFoundError:
        raise HubError(f"{source}: no such local path, and no Hub repository {repo_id!r} (or it is private: "
                       f"set HF_TOKEN) for {what}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise HubError(f"{source}: no such local path, and the Hub repository {repo_id} is not in the local Hub cache "
                       f"and {why}; download it where you have network "
                       f"(huggingface-cli download {repo_id}), set HF_HUB_CACHE to that cache, or pass a local path "
                       f"for {what}") from None
    except Exception as e:  # noqa: BLE001 - network and server errors, reported with the id
        raise HubError(f"{repo_id}: could not fetch {what} from the Hub ({type(e).__name__}: {str(e)[:200]})") from None
    out = folder / subfolder if subfolder else folder
    if not out.exists():
        raise HubError(f"{repo_id}: the snapshot {folder} has no {subfolder}/ folder for {what}")
    return out


def find_checkpoint(folder: Path, names: tuple[str, ...], subfolder: str | None = None) -> Path | None:
    """The first of ``names`` in ``folder`` (then in ``folder/subfolder``), or ``None``."""
    for f in [folder] + ([folder / subfolder] if subfolder else []):
        for n in names:
            if (f / n).is_file():
                return f / n
    return None


def resolve_checkpoint(source: str | os.PathLike, subfolder: str | None = None,
                       names: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin"),
                       what: str = "weights") -> Path:
    """The checkpoint file for ``source``: a file; a folder holding one of ``names`` (directly or in
    ``subfolder``: a whole repository snapshot); or a Hub id (its ``subfolder``).

    Args:
        source: file, folder or Hub id.
        subfolder: the repository subfolder of this component (``slide-encoder``, ``patch-encoder``).
        names: checkpoint file names, in order of preference.
        what: what is being resolved, for error messages.

    Returns:
        Path of the checkpoint file.

    Raises:
        HubError: nothing found (the message names where it looked).
    """
    path = resolve_source(source, subfolder=subfolder if is_hub_id(source) else None, what=what)
    if path.is_file():
        return path
    found = find_checkpoint(path, names, subfolder)
    if found is None:
        where = f"{path}" + (f" or {path / subfolder}" if subfolder else "")
        raise HubError(f"{where}: no {' or '.join(names)} for {what}")
    return found


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload pathalign model") -> str:
    """Upload a saved model folder to the Hub repository ``repo_id`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return f"https://huggingface.co/{repo_id}"
