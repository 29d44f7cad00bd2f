"""``pathalign doctor SLIDES...``: a pre-flight check of slides, before a long ``preprocess`` job.

Per slide, from its metadata only (no pixel is segmented, patched or encoded): whether it opens,
the backend that opened it, mpp and where it came from, objective power, pyramid levels, the
level-0 magnification and patch grid ``preprocess`` would use under the chosen ``--scale``, and
what is wrong. Printed as a table; ``--json FILE`` writes the same rows as JSON. The exit code is
0 when every slide can be preprocessed with these settings, 3 otherwise.
"""
from __future__ import annotations

from pathlib import Path

from .patch import PatchConfig, patch_geometry
from .reader import SlideError, open_slide
from .scale import nominal_magnification

#: objective power and mpp-binned magnification differing by more than this ratio are reported
POWER_MISMATCH = 1.25


def check_slide(path: str | Path, cfg: PatchConfig, backend: str = "auto", mpp: float | None = None) -> dict:
    """The pre-flight row of one slide (never raises for a bad slide: ``ok`` False and ``problems`` say why).

    Args:
        path: the slide file.
        cfg: the patch settings ``preprocess`` would use (magnification, patch size, scale).
        backend: slide reader (``auto``, ``openslide``, ``tiffslide``).
        mpp: the ``--mpp`` that ``preprocess`` would be given.

    Returns:
        ``{"slide", "path", "ok", "opens", "backend", "mpp", "mpp_source", "objective_power", "levels",
        "dimensions", "level_downsamples", "level0_magnification", "scale", "patch_size_level0",
        "read_level", "problems", "warnings"}``.
    """
    path = Path(path)
    row = {"slide": path.stem, "path": str(path), "ok": False, "opens": False, "backend": None, "mpp": None,
           "mpp_source": None, "objective_power": None, "levels": None, "dimensions": None,
           "level_downsamples": None, "level0_magnification": None, "scale": cfg.scale, "patch_size_level0": None,
           "read_level": None, "problems": [], "warnings": []}
    try:
        slide = open_slide(path, backend, mpp)
    except SlideError as e:
        row["problems"].append(str(e))
        return row
    except Exception as e:  # noqa: BLE001 - any reader failure is a finding, not a crash
        row["problems"].append(f"{path}: {type(e).__name__}: {e}")
        return row
    with slide:
        row.update(opens=True, backend=slide.backend, mpp=slide.mpp, mpp_source=slide.mpp_source,
                   objective_power=slide.objective_power, levels=slide.level_count,
                   dimensions=[list(d) for d in slide.level_dimensions],
                   level_downsamples=[round(d, 4) for d in slide.level_downsamples])
        if slide.mpp_source == "objective-power":
            row["warnings"].append(f"no mpp in the file: {slide.mpp:g} µm/px taken from the objective power "
                                   f"{slide.objective_power:g}x (pass --mpp to set it)")
        elif slide.mpp_source == "user":
            row["warnings"].append(f"no mpp in the file: --mpp {slide.mpp:g} used")
        if slide.objective_power and slide.mpp_source != "objective-power":
            binned = nominal_magnification(slide.mpp)
            ratio = max(binned, slide.objective_power) / min(binned, slide.objective_power)
            if ratio > POWER_MISMATCH:
                row["warnings"].append(f"objective power {slide.objective_power:g}x disagrees with the mpp "
                                       f"({slide.mpp:g} µm/px = {binned:g}x); the mpp is used")
        try:
            geo = patch_geometry(slide, cfg)
        except ValueError as e:
            row["problems"].append(str(e))
        else:
            row.update(level0_magnification=round(float(geo["level0_magnification"]), 4),
                       patch_size_level0=int(geo["patch_size_level0"]), read_level=int(geo["read_level"]))
            w0, h0 = slide.dimensions
            if w0 < geo["patch_size_level0"] or h0 < geo["patch_size_level0"]:
                row["problems"].append(f"{path}: {w0} x {h0} px is smaller than one patch "
                                       f"({geo['patch_size_level0']} level-0 px)")
    row["ok"] = not row["problems"]
    return row


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``check_slide`` rows, with a count line first."""
    bad = sum(not r["ok"] for r in rows)
    lines = [f"{len(rows)} slides: {len(rows) - bad} ready, {bad} with problems", "",
             "| slide | ok | backend | mpp | mpp from | objective | levels | level-0 mag | scale | patch level-0 px "
             "| read level | problems / warnings |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt="{:g}"):
        return "" if v is None else fmt.format(v)

    for r in rows:
        notes = "; ".join(r["problems"] + [f"warning: {w}" for w in r["warnings"]])
        lines.append(f"| {r['slide']} | {'yes' if r['ok'] else 'NO'} | {r['backend'] or ''} | {f(r['mpp'])} | "
                     f"{r['mpp_source'] or ''} | {f(r['objective_power'])} | {f(r['levels'], '{}')} | "
                     f"{f(r['level0_magnification'])} | {r['scale']} | {f(r['patch_size_level0'], '{}')} | "
                     f"{f(r['read_level'], '{}')} | {notes[:200]} |")
    return "\n".join(lines)
