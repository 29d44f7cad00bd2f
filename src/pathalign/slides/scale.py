"""The physical scale of a slide: its level-0 magnification and the level-0 side of a patch.

Two rules, one per peer pipeline (their code is cited in ``docs/slide_scale.md``):

* ``nominal`` (default, Trident's ``WSI._fetch_magnification`` and ``WSIPatcher``): the level-0
  magnification is the mpp binned to a nominal value (< 0.16 µm/px 80x, < 0.2 60x, < 0.3 40x,
  < 0.6 20x, < 1.2 10x, < 2.4 5x), the objective power only where the slide has no mpp; the
  level-0 patch side is ``round(patch_size * (10 / target) / (10 / level0))``.
* ``exact-mpp`` (EXAONE Path 2.5's ``patchify``): the level-0 patch side is
  ``int(patch_size * (target_mpp / mpp))`` with ``target_mpp = 10 / target`` (0.5 µm/px at 20x),
  so a 40x scan at 0.2266 µm/px gives 564 level-0 px for 256 px at 20x where ``nominal`` gives 512.
"""
from __future__ import annotations

SCALES = ("nominal", "exact-mpp")

#: Trident's bins: (upper mpp bound, nominal magnification), first match wins
NOMINAL_BINS = ((0.16, 80.0), (0.2, 60.0), (0.3, 40.0), (0.6, 20.0), (1.2, 10.0), (2.4, 5.0))


def nominal_magnification(mpp: float | None, objective_power: float | None = None) -> float | None:
    """The nominal level-0 magnification: ``mpp`` binned (Trident's rule), else ``objective_power``.

    The mpp is rounded to 4 decimals first, as Trident's ``_fetch_mpp`` does. Beyond Trident's last
    bin (mpp >= 2.4 µm/px, which Trident refuses) the magnification is ``10 / mpp``.

    Args:
        mpp: level-0 microns per pixel, or None when the slide has none.
        objective_power: the scanner's objective power, used only when ``mpp`` is None.

    Returns:
        The magnification, or None when neither is known.
    """
    if mpp is not None and mpp > 0:
        m = round(float(mpp), 4)
        for bound, mag in NOMINAL_BINS:
            if m < bound:
                return mag
        return 10.0 / float(mpp)
    if objective_power:
        return float(objective_power)
    return None


def level0_patch_size(patch_size: int, target_magnification: float, scale: str, mpp: float,
                      level0_magnification: float) -> tuple[int, float]:
    """The level-0 patch side and the level-0 → target downsample under ``scale``.

    Args:
        patch_size: patch side in px at the target magnification.
        target_magnification: e.g. 20 (0.5 µm/px).
        scale: ``nominal`` or ``exact-mpp``.
        mpp: level-0 µm/px (used by ``exact-mpp``).
        level0_magnification: the nominal level-0 magnification (used by ``nominal``).

    Returns:
        ``(patch_size_level0, downsample)``.
    """
    if scale == "nominal":
        downsample = (10.0 / target_magnification) / (10.0 / level0_magnification)
        return int(round(patch_size * downsample)), downsample
    if scale == "exact-mpp":
        crop_factor = (10.0 / target_magnification) / float(mpp)
        return int(int(patch_size) * crop_factor), crop_factor
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
