"""Whole-slide image reading behind one interface, with OpenSlide and a pure-Python fallback.

``open_slide(path)`` tries OpenSlide (``openslide-python`` + the ``openslide-bin`` wheel),
then ``tiffslide`` (tifffile-based: TIFF, SVS, OME-TIFF), and ``wsidicom`` first for a DICOM
WSI (a folder of ``.dcm`` instances, or one ``.dcm`` file). Microns per pixel come from the file; when
the file has none, from ``mpp=`` given by the caller, then from the file's objective power
(``10 / power``: 20x = 0.5 µm/px); a slide with none of them fails to open with an error
naming it — never guessed. ``mpp_source`` says which one was used.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import PathalignError
from ..registry import Registry
from .scale import nominal_magnification

SLIDE_BACKENDS: Registry[type] = Registry("slide reader backend")


class SlideError(PathalignError, RuntimeError):
    """A slide that cannot be read; the message names the file."""


class SlideReader:
    """Common surface of every backend (level 0 = full resolution)."""

    backend = "base"

    def __init__(self, path: str | Path, mpp: float | None = None):
        self.path = Path(path)
        self._handle = self._open()
        props = self._properties()
        file_mpp = props.get("mpp")
        self.objective_power: float | None = props.get("objective_power")
        if file_mpp is not None and np.isfinite(file_mpp) and file_mpp > 0:
            self.mpp_source = "file"
        elif mpp is not None:
            file_mpp, self.mpp_source = float(mpp), "user"
        elif self.objective_power:
            file_mpp, self.mpp_source = 10.0 / float(self.objective_power), "objective-power"
        else:
            raise SlideError(f"{self.path}: the slide carries neither microns-per-pixel nor an objective power; "
                             "pass --mpp for it")
        self.mpp: float = float(file_mpp)

    # -- backend hooks
    def _open(self):
        raise NotImplementedError

    def _properties(self) -> dict:
        raise NotImplementedError

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(map(int, d)) for d in self._handle.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self._handle.level_downsamples]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def magnification(self) -> float:
        """Nominal level-0 magnification: the mpp binned as Trident does, the objective power only without an mpp.

        See ``slides.scale.nominal_magnification`` (a 0.2266 µm/px scan is 40x whatever power it records).
        """
        measured = None if self.mpp_source == "objective-power" else self.mpp
        return float(nominal_magnification(measured, self.objective_power))

    def best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level whose downsample is at most ``downsample`` (with 1% slack)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    #: the most pixels one backend call may return; larger requests are read tile by tile
    max_read_px: int = 2048 * 2048

    def _backend_read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """One backend call: RGB ``uint8 [h, w, 3]``, transparent pixels composited onto white."""
        try:
            img = self._handle.read_region((int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1])))
        except Exception as e:  # noqa: BLE001 - any decoder failure names the slide
            raise SlideError(f"{self.path}: cannot read region {location} level {level} ({type(e).__name__}: {e})") from None
        arr = np.asarray(img)
        if arr.ndim == 3 and arr.shape[2] == 4:
            return composite_on_white(arr)
        return np.ascontiguousarray(arr[..., :3])

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8 [h, w, 3]`` of ``size`` (w, h) at ``level``; ``location`` (x, y) in level-0 px.

        A region of more than ``max_read_px`` pixels is read in square tiles straight into the
        ``uint8`` result, so memory is the result plus one tile (the backend's RGBA copy of a
        whole region, and a float copy of it, never exist).
        """
        w, h = int(size[0]), int(size[1])
        if w * h <= self.max_read_px:
            return self._backend_read(location, level, (w, h))
        side = max(1, math.isqrt(self.max_read_px))
        ds = self.level_downsamples[level]
        out = np.empty((h, w, 3), np.uint8)
        for y in range(0, h, side):
            for x in range(0, w, side):
                tw, th = min(side, w - x), min(side, h - y)
                loc = (int(location[0]) + int(round(x * ds)), int(location[1]) + int(round(y * ds)))
                out[y:y + th, x:x + tw] = self._backend_read(loc, level, (tw, th))
        return out

    def read_level(self, level: int) -> np.ndarray:
        """A whole level as RGB (memory: the level's size in RGB plus one read tile)."""
        w, h = self.level_dimensions[level]
        return self.read_region((0, 0), level, (w, h))

    def close(self) -> None:
        try:
            self._handle.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name}, {self.dimensions}, {self.level_count} levels, mpp={self.mpp})"


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` of an RGBA ``uint8 [h, w, 4]`` image over white, in integer arithmetic (no float copy).

    ``floor((c * a + 255 * (255 - a)) / 255)`` per channel: exact for opaque and fully transparent
    pixels, within one level of the float formula otherwise.
    """
    out = np.empty(rgba.shape[:2] + (3,), np.uint8)
    alpha = rgba[..., 3].astype(np.uint16)
    rest = (255 - alpha) * 255
    for c in range(3):  # one channel at a time: temporaries stay at 2 bytes per pixel
        out[..., c] = (rgba[..., c] * alpha + rest) // 255
    return out


def _float(v) -> float | None:
    try:
        f = float(v)
        return f if np.isfinite(f) and f > 0 else None
    except (TypeError, ValueError):
        return None


@SLIDE_BACKENDS.register("openslide")
class OpenSlideReader(SlideReader):
    backend = "openslide"

    def _open(self):
        import openslide

        return openslide.OpenSlide(str(self.path))

    def _properties(self) -> dict:
        p = self._handle.properties
        return {"mpp": _float(p.get("openslide.mpp-x")), "objective_power": _float(p.get("openslide.objective-power"))}


@SLIDE_BACKENDS.register("tiffslide")
class TiffSlideReader(SlideReader):
    backend = "tiffslide"

    def _open(self):
        import tiffslide

        return tiffslide.TiffSlide(str(self.path))

    def _properties(self) -> dict:
        p = self._handle.properties
        mpp = _float(p.get("tiffslide.mpp-x"))
        if mpp is None:
            mpp = ome_mpp(self.path)
        return {"mpp": mpp, "objective_power": _float(p.get("tiffslide.objective-power"))}


#: micrometres per OME length unit
_OME_UNITS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(path: str | Path) -> float | None:
    """µm/px of an OME-TIFF's first image from its OME-XML ``PhysicalSizeX`` (None when it has none)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.is_ome:
                return None
            image = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
        size = _float(pixels.get("PhysicalSizeX"))
        unit = _OME_UNITS.get(str(pixels.get("PhysicalSizeXUnit", "µm")))
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None
    return size * unit if size is not None and unit is not None else None


@SLIDE_BACKENDS.register("wsidicom")
class WsiDicomReader(SlideReader):
    """A DICOM WSI (VL Whole Slide Microscopy Image instances) through ``wsidicom``.

    ``path`` is the folder of the slide's ``.dcm`` instances (or one ``.dcm`` file). Pyramid levels are
    ``wsidicom``'s levels from the base; a region reaching past a level's edge is white there, as
    OpenSlide's transparent padding is after compositing.
    """

    backend = "wsidicom"

    def _open(self):
        from wsidicom import WsiDicom

        return WsiDicom.open(self.path)

    def _properties(self) -> dict:
        w = self._handle
        power = None
        try:
            power = _float(w.metadata.pyramid.optical_paths[0].objective.objective_power)
        except (AttributeError, IndexError, TypeError):
            pass
        return {"mpp": _float(w.mpp.width), "objective_power": power}

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [(int(lv.size.width), int(lv.size.height)) for lv in self._handle.levels]

    @property
    def level_downsamples(self) -> list[float]:
        (w0, h0), dims = self.level_dimensions[0], self.level_dimensions
        return [(w0 / w + h0 / h) / 2.0 for w, h in dims]  # as OpenSlide computes them

    def _backend_read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        lv = list(self._handle.levels)[level]
        ds = self.level_downsamples[level]
        lw, lh = int(lv.size.width), int(lv.size.height)
        x, y = int(location[0] // ds), int(location[1] // ds)  # level-0 location -> this level's pixels
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            img = self._handle.read_region((x0, y0), int(lv.level), (x1 - x0, y1 - y0))
        except Exception as e:  # noqa: BLE001 - any decoder failure names the slide
            raise SlideError(f"{self.path}: cannot read region {location} level {level} ({type(e).__name__}: {e})") from None
        arr = np.asarray(img)
        arr = composite_on_white(arr) if arr.ndim == 3 and arr.shape[2] == 4 else arr[..., :3]
        out[y0 - y:y1 - y, x0 - x:x1 - x] = arr
        return out


def is_dicom_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``.dcm`` files (one DICOM WSI)."""
    path = Path(path)
    return path.is_dir() and any(c.suffix.lower() == ".dcm" for c in path.iterdir())


def open_slide(path: str | Path, backend: str = "auto", mpp: float | None = None) -> SlideReader:
    """Open a slide with ``backend`` (``auto``: OpenSlide, then tiffslide; tiffslide first for an OME-TIFF;
    wsidicom, then OpenSlide for DICOM).

    A backend that opens the file but finds no mpp (and no objective power) gives way to the next
    one; the slide is refused for its missing mpp only if no backend finds one.

    Raises:
        SlideError: the file is missing, not a slide, corrupt, or has no mpp (and none was given).
    """
    path = Path(path)
    dicom = is_dicom_folder(path) or (path.is_file() and path.suffix.lower() == ".dcm")
    if not path.is_file() and not dicom:
        raise SlideError(f"{path}: no such slide file")
    if backend != "auto":
        names = [backend]
    else:
        ome = path.name.lower().endswith((".ome.tif", ".ome.tiff"))  # OpenSlide misses their SubIFD pyramid
        names = ["wsidicom", "openslide"] if dicom else ["tiffslide", "openslide"] if ome else ["openslide", "tiffslide"]
    errors, no_mpp = [], None
    for name in names:
        try:
            return SLIDE_BACKENDS.get(name)(path, mpp=mpp)
        except SlideError as e:
            if "microns-per-pixel" in str(e):
                no_mpp = no_mpp or e
                continue
            errors.append(f"{name}: {e}")
        except KeyError:
            raise
        except Exception as e:  # noqa: BLE001 - backend-specific "not a slide" errors
            errors.append(f"{name}: {type(e).__name__}: {e}")
    if no_mpp is not None:
        raise no_mpp
    raise SlideError(f"{path}: cannot open as a slide ({'; '.join(errors)})")
