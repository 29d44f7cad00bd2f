"""The coordinate contract of a features folder: every slide at one scale, by one patch encoder.

A slide encoder's positions (RoPE over level-0 coords / ``patch_size_level0``) and its token
scale assume every slide of a folder was patched at the same target magnification and patch
size, and encoded by the same patch encoder. ``check_features_folder`` reads each file's
attributes (never its arrays) and refuses a folder whose files disagree, naming the slides and
the values. It is called where ``train`` and ``embed`` take their slides from a folder.

Per file (``file_contract``):

* ``encoder``: the file's ``encoder`` attribute, else the folder's name ``features_<encoder>``
  (the layout of pathalign and Trident), else unknown;
* ``target_magnification`` and ``patch_size`` (px at the target): the attributes pathalign and
  Trident write; unknown in CLAM and EXAONE Path files (their ``patch_size`` is in pixels of
  ``patch_level``, not at a target magnification);
* ``patch_size_level0``: the attribute, else CLAM/EXAONE's ``patch_size * downsample``, else unknown;
* ``mpp``: the attribute (pathalign), else unknown (Trident, CLAM and EXAONE files carry none);
* ``effective_magnification``: the magnification a patch actually covers,
  ``level0_magnification * patch_size / patch_size_level0``, or ``10 * patch_size /
  (patch_size_level0 * mpp)`` without a level-0 magnification; unknown without those.

The rule: ``encoder``, ``target_magnification`` and ``patch_size`` must be equal wherever two files
know them; ``effective_magnification`` must lie within ``EFFECTIVE_TOLERANCE`` of the folder's
median (``exact-mpp`` grids truncate the patch side, so it is a few tenths of a percent off the
target, where a slide patched at another magnification is a factor off). An unknown value is
not compared: a Trident, CLAM or EXAONE file lacking an attribute passes on it. ``mpp`` and
``patch_size_level0`` differ between scanners by design and are compared only through
``effective_magnification``.

A trained model records the scale of its training folder (``features_scale``: the agreed
``target_magnification`` and ``patch_size``, the median ``effective_magnification``) in its
``patch_encoder`` record. ``check_model_scale`` applies the same rule between the features a model
is given at inference and that record: equal ``target_magnification`` and ``patch_size`` where both
are known, each file's ``effective_magnification`` within ``EFFECTIVE_TOLERANCE`` of the model's;
a value unknown on either side is not compared (a model saved before the record has none).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from ..errors import PathalignError

EFFECTIVE_TOLERANCE = 0.05
COMPARED = ("encoder", "target_magnification", "patch_size")
SCALE_KEYS = ("target_magnification", "patch_size", "effective_magnification")


class ContractError(PathalignError, ValueError):
    """The features files of a folder disagree on their scale or patch encoder; the message names the slides."""


def _value(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.reshape(-1)[0].item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _positive(v) -> float | None:
    try:
        f = float(np.atleast_1d(np.asarray(v, float))[0])
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def file_encoder(path: str | Path) -> str | None:
    """The ``encoder`` attribute of one features file (None when the file does not record it).

    Raises OSError when the file cannot be opened, as ``h5py`` does.
    """
    with h5py.File(Path(path), "r") as fh:
        enc = fh.attrs.get("encoder")
    return None if enc is None else str(_value(enc))


def file_contract(path: str | Path) -> dict:
    """The contract values of one coords/features file (None where unknown; see the module docstring).

    Args:
        path: a pathalign, Trident, CLAM or EXAONE Path ``.h5`` file.

    Returns:
        ``{"encoder", "target_magnification", "patch_size", "patch_size_level0", "mpp",
        "effective_magnification"}``; an unreadable file gives all None (its reader names the problem).
    """
    path = Path(path)
    attrs: dict = {}
    try:
        with h5py.File(path, "r") as fh:
            attrs.update({k: _value(v) for k, v in fh.attrs.items()})
            if "coords" in fh:
                attrs.update({k: _value(v) for k, v in fh["coords"].attrs.items()})
    except OSError:
        pass
    encoder = attrs.get("encoder")
    if encoder is None and path.parent.name.startswith("features_"):
        encoder = path.parent.name[len("features_"):]
    target = _positive(attrs.get("target_magnification"))
    patch_size = _positive(attrs.get("patch_size")) if target is not None else None
    size0 = _positive(attrs.get("patch_size_level0"))
    if size0 is None and _positive(attrs.get("patch_size")) and _positive(attrs.get("downsample")):
        size0 = _positive(attrs["patch_size"]) * _positive(attrs["downsample"])
    mpp = _positive(attrs.get("mpp"))
    level0 = _positive(attrs.get("level0_magnification"))
    effective = None
    if patch_size and size0:
        if level0:
            effective = level0 * patch_size / size0
        elif mpp:
            effective = 10.0 * patch_size / (size0 * mpp)
    return {"encoder": None if encoder is None else str(encoder), "target_magnification": target,
            "patch_size": None if patch_size is None else int(round(patch_size)),
            "patch_size_level0": None if size0 is None else int(round(size0)), "mpp": mpp,
            "effective_magnification": effective}


def _slides_by_value(contracts: dict[str, dict], key: str) -> dict:
    """``{value: [slide ids]}`` of the files that know ``key`` (floats rounded to 6 decimals)."""
    groups: dict = defaultdict(list)
    for s, c in contracts.items():
        v = c.get(key)
        if v is not None:
            groups[round(v, 6) if isinstance(v, float) else v].append(s)
    return groups


def _describe(groups: dict) -> str:
    """``"40 (3 slides: a, b, c); 20 (1 slide: d)"``, the most common value first."""
    parts = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    return "; ".join(f"{_fmt(v)} ({len(ids)} slide{'s' * (len(ids) > 1)}: {_names(ids)})" for v, ids in parts)


def _names(ids: list[str], limit: int = 8) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def check_features_folder(features_dir: str | Path, slide_ids: list[str] | None = None) -> dict[str, dict]:
    """Refuse a features folder whose files disagree on scale or patch encoder (see the module docstring).

    Args:
        features_dir: the folder of ``<slide_id>.h5`` files.
        slide_ids: the slides a consumer will read (None: every ``.h5`` file of the folder); missing
            files are left to the consumer.

    Returns:
        ``{slide_id: file_contract(...)}`` of the files checked.

    Raises:
        ContractError: two files disagree; the message names the folder, each differing value
            and the slides holding it.
    """
    features_dir = Path(features_dir)
    if slide_ids is None:
        paths = {p.stem: p for p in sorted(features_dir.glob("*.h5"))}
    else:
        paths = {s: features_dir / f"{s}.h5" for s in dict.fromkeys(slide_ids)}
    contracts = {s: file_contract(p) for s, p in paths.items() if p.is_file()}
    problems = []
    for key in COMPARED:
        groups = _slides_by_value(contracts, key)
        if len(groups) > 1:
            problems.append(f"{key}: " + _describe(groups))
    eff = {s: c["effective_magnification"] for s, c in contracts.items() if c["effective_magnification"]}
    if len(eff) > 1:
        median = float(np.median(list(eff.values())))
        off = {s: v for s, v in eff.items() if abs(v / median - 1) > EFFECTIVE_TOLERANCE}
        if off:
            problems.append(f"effective magnification (level-0 patch side and mpp): folder median {median:.3g}x, "
                            + "; ".join(f"{s} {v:.3g}x (patch_size_level0 {contracts[s]['patch_size_level0']}, "
                                        f"mpp {_fmt(contracts[s]['mpp'])})" for s, v in list(off.items())[:8]))
    if problems:
        raise ContractError(f"{features_dir}: the features files disagree, so their positions and scales cannot be "
                            "mixed in one model — " + " | ".join(problems) + ". Re-extract the odd slides with the "
                            "folder's settings, or give them their own folder")
    return contracts


def features_scale(contracts: dict[str, dict]) -> dict:
    """The scale of a checked folder, as a model records it (None where no file knows it).

    Args:
        contracts: ``check_features_folder``'s result (its files agree on the compared values).

    Returns:
        ``{"target_magnification", "patch_size", "effective_magnification"}``: the first known
        target magnification and patch size, the median effective magnification.
    """
    def known(key):
        return [c[key] for c in contracts.values() if c.get(key) is not None]

    target, size, eff = known("target_magnification"), known("patch_size"), known("effective_magnification")
    return {"target_magnification": float(target[0]) if target else None,
            "patch_size": int(size[0]) if size else None,
            "effective_magnification": float(np.median(eff)) if eff else None}


def check_model_scale(trained: dict | None, contracts: dict[str, dict], where: str) -> None:
    """Refuse features at another scale than the model's record (see the module docstring).

    Args:
        trained: the model's ``patch_encoder`` record (None or without scale keys: nothing compared).
        contracts: ``{slide_id: file_contract(...)}`` of a folder (``check_features_folder``'s result), or
            of the one file a command reads.
        where: the file or folder named in the error.

    Raises:
        ContractError: naming ``where``, the slides and values that differ, the model's values and
            the ``pathalign preprocess`` options that make features at the model's scale.
    """
    trained = {k: (trained or {}).get(k) for k in SCALE_KEYS}
    if all(v is None for v in trained.values()):
        return
    problems = []
    for key in ("target_magnification", "patch_size"):
        if trained[key] is None:
            continue
        groups = {v: ids for v, ids in _slides_by_value(contracts, key).items()
                  if round(float(v), 6) != round(float(trained[key]), 6)}
        if groups:
            problems.append(f"{key} " + _describe(groups) + f", the model's {_fmt(trained[key])}")
    if trained["effective_magnification"] is not None:
        ref = float(trained["effective_magnification"])
        off = {s: c["effective_magnification"] for s, c in contracts.items()
               if c.get("effective_magnification") and abs(c["effective_magnification"] / ref - 1) > EFFECTIVE_TOLERANCE}
        if off:
            problems.append("effective magnification " + "; ".join(f"{s} {v:.3g}x" for s, v in list(off.items())[:8])
                            + (f" and {len(off) - 8} more" if len(off) > 8 else "") + f", the model's {ref:.3g}x")
    if problems:
        flags = " ".join(f"--{k.replace('target_', '').replace('_', '-')} {_fmt(trained[k])}"
                         for k in ("target_magnification", "patch_size") if trained[k] is not None)
        fix = f"'pathalign preprocess {flags}'" if flags else "'pathalign preprocess'"
        raise ContractError(f"{where}: these patch features are not at the scale this model was trained at, so their "
                            "positions and tokens would mean something else — " + " | ".join(problems)
                            + f". Re-extract them at the model's scale with {fix} (and the --scale of its training "
                            "features), or use a model trained at theirs")
