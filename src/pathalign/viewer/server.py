"""``pathalign view``: a slide with its heatmaps in the browser, served on 127.0.0.1 only.

The page is OpenSeadragon (shipped in ``viewer/static``, see its README) over deep-zoom tiles that
OpenSlide's :class:`~openslide.deepzoom.DeepZoomGenerator` cuts from the slide; each heatmap score
(``pathalign heatmap``) is a switchable image overlay with an opacity slider, the fragment outlines
another; with ``--embeddings`` the panel lists the patient's nearest neighbours in each pair space.

Every URL the server answers is one of a fixed set of routes (the page, the viewer script, the DZI,
its tiles, the overlays); no part of a URL is ever used as a file path, so nothing but the files
given on the command line and the packaged script can be read through it.
"""
from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PathalignError

PACKAGE = Path(__file__).resolve().parent
STATIC = {"openseadragon.min.js": ("application/javascript", PACKAGE / "static" / "openseadragon.min.js")}
TILE = re.compile(r"^/slide_files/(\d+)/(\d+)_(\d+)\.jpeg$")
OVERLAY = re.compile(r"^/overlay/(\d+)\.png$")
OVERLAY_SIDE = 1024
CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:"


class ViewerError(PathalignError, ValueError):
    """A slide or heatmap file the viewer cannot show."""


def open_deepzoom_slide(path: str | Path) -> Any:
    """The slide as an object :class:`DeepZoomGenerator` reads: OpenSlide, else tiffslide (same interface)."""
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as first:
        try:
            import tiffslide

            return tiffslide.TiffSlide(str(path))
        except Exception as e:  # tiffslide raises several kinds; the message names both readers
            raise ViewerError(f"{path}: neither OpenSlide ({first}) nor tiffslide ({e}) can open it") from None


def _png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "png")
    return buf.getvalue()


def overlay_image(coords: np.ndarray, values: np.ndarray, size: float, dims: tuple[int, int],
                  side: int = OVERLAY_SIDE) -> np.ndarray:
    """RGBA ``[h, w, 4]`` covering the whole slide (``dims`` level-0 w, h): each patch square in viridis by its value
    (min to max of the finite values), transparent elsewhere."""
    from matplotlib import colormaps

    ds = max(dims) / side
    h, w = int(np.ceil(dims[1] / ds)), int(np.ceil(dims[0] / ds))
    img = np.zeros((h, w, 4), np.uint8)
    finite = np.isfinite(values)
    if not finite.any():
        return img
    lo, hi = float(values[finite].min()), float(values[finite].max())
    rgba = (colormaps["viridis"]((values - lo) / (hi - lo if hi > lo else 1.0)) * 255).astype(np.uint8)
    for (x, y), colour, ok in zip(coords, rgba, finite):
        if ok:
            x0, y0 = int(x / ds), int(y / ds)
            img[y0:max(y0 + 1, int((y + size) / ds)), x0:max(x0 + 1, int((x + size) / ds))] = colour
    return img


def outline_image(coords: np.ndarray, fragment: np.ndarray, size: float, dims: tuple[int, int],
                  side: int = OVERLAY_SIDE) -> np.ndarray:
    """RGBA ``[h, w, 4]``: the fragment outlines on the patch grid in white, transparent elsewhere."""
    import cv2

    from ..evaluate.heatmap_plot import fragment_outline_segments

    ds = max(dims) / side
    img = np.zeros((int(np.ceil(dims[1] / ds)), int(np.ceil(dims[0] / ds)), 4), np.uint8)
    for (x0, y0), (x1, y1) in fragment_outline_segments(coords, fragment, size) / ds:
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), (255, 255, 255, 255), 2)
    return img


def nearest_neighbours(embeddings_path: str | Path, slide_id: str, k: int = 5) -> tuple[str | None, dict]:
    """The slide's patient and, per ``wsi-X`` pair space, the ``k`` patients whose X embedding is closest (cosine)
    to the slide's: ``(case id, {X: [(patient, cosine), ...]})``."""
    from ..io.embeddings import read_embeddings, slide_case_id

    emb = read_embeddings(embeddings_path)
    wsi = emb.get("wsi")
    if not wsi or slide_id not in wsi["ids"]:
        return None, {}
    row = list(wsi["ids"]).index(slide_id)
    case = slide_case_id(emb, slide_id)
    out = {}
    for key, pair in emb.get("pairs", {}).items():
        a, b = key.split("-", 1)
        other = b if a == "wsi" else a if b == "wsi" else None
        if other is None or other not in emb:
            continue
        q = pair["wsi"][row]
        sims = pair[other] @ q / (np.linalg.norm(pair[other], axis=1) * np.linalg.norm(q) + 1e-12)
        top = np.argsort(-sims)[:k]
        out[other] = [(emb[other]["ids"][i], float(sims[i])) for i in top]
    return case, out


@dataclass
class ViewerContent:
    """Everything the server hands out, prepared before it starts (tiles are cut on request)."""

    slide_path: Path
    deepzoom: object
    scores: list[str] = field(default_factory=list)
    ranges: dict[str, list[float]] = field(default_factory=dict)
    overlays: list[bytes] = field(default_factory=list)
    outlines: bytes | None = None
    case_id: str | None = None
    neighbours: dict = field(default_factory=dict)

    def page(self) -> bytes:
        config = {"slide": self.slide_path.name, "scores": self.scores, "ranges": self.ranges,
                  "has_outlines": self.outlines is not None, "case_id": self.case_id, "neighbours": self.neighbours}
        text = (PACKAGE / "page.html").read_text()
        text = text.replace("__TITLE__", self.slide_path.name)
        return text.replace("__CONFIG__", json.dumps(config).replace("</", "<\\/")).encode()


def prepare(slide: str | Path, heatmaps: str | Path | None = None, embeddings: str | Path | None = None,
            tile_size: int = 254) -> ViewerContent:
    """Open the slide and render the overlays of a ``pathalign heatmap`` file.

    Args:
        slide: the slide file.
        heatmaps: ``<slide>.heatmaps.h5`` from ``pathalign heatmap`` (optional).
        embeddings: ``embeddings.h5`` from ``pathalign embed`` (optional): nearest neighbours.
        tile_size: deep-zoom tile side (OpenSlide's default 254 + 1 px overlap).
    """
    from openslide.deepzoom import DeepZoomGenerator

    slide = Path(slide)
    if not slide.is_file():
        raise ViewerError(f"{slide}: no such slide file")
    osr = open_deepzoom_slide(slide)
    content = ViewerContent(slide, DeepZoomGenerator(osr, tile_size=tile_size, overlap=1, limit_bounds=False))
    dims = tuple(int(v) for v in osr.dimensions)
    if heatmaps is not None:
        from ..io.heatmaps import read_heatmaps

        hm = read_heatmaps(heatmaps)
        for name, values in sorted(hm.scores.items()):
            finite = values[np.isfinite(values)]
            content.scores.append(name)
            content.ranges[name] = [float(finite.min()), float(finite.max())] if len(finite) else [0.0, 0.0]
            content.overlays.append(_png(overlay_image(hm.coords, values, hm.patch_size_level0, dims)))
        content.outlines = _png(outline_image(hm.coords, hm.fragment, hm.patch_size_level0, dims))
    if embeddings is not None:
        content.case_id, content.neighbours = nearest_neighbours(embeddings, slide.stem)
    return content


def make_handler(content: ViewerContent, log: list | None = None) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving ``content`` (``log`` collects every requested path)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: the command prints its URL once
            pass

        def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", CSP)  # the page may fetch from this server only
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (the http.server name)
            path = self.path.split("?", 1)[0]
            if log is not None:
                log.append(self.path)
            try:
                body = self._route(path)
            except Exception as e:  # a bad tile request is that request's error, not the server's end
                self._send(f"error: {e}".encode(), "text/plain", 500)
                return
            if body is None:
                self._send(b"not found", "text/plain", 404)
            else:
                self._send(*body)

        def _route(self, path: str) -> tuple[bytes, str] | None:
            if path in ("/", "/index.html"):
                return content.page(), "text/html; charset=utf-8"
            if path.startswith("/static/") and path[len("/static/"):] in STATIC:
                ctype, file = STATIC[path[len("/static/"):]]
                return file.read_bytes(), ctype
            if path == "/slide.dzi":
                return content.deepzoom.get_dzi("jpeg").encode(), "application/xml"
            m = TILE.match(path)
            if m:
                level, col, row = (int(g) for g in m.groups())
                if not (0 <= level < content.deepzoom.level_count):
                    return None
                cols, rows = content.deepzoom.level_tiles[level]
                if not (0 <= col < cols and 0 <= row < rows):
                    return None
                with lock:  # one slide handle, several request threads
                    tile = content.deepzoom.get_tile(level, (col, row)).convert("RGB")
                buf = io.BytesIO()
                tile.save(buf, "jpeg", quality=85)
                return buf.getvalue(), "image/jpeg"
            m = OVERLAY.match(path)
            if m and int(m.group(1)) < len(content.overlays):
                return content.overlays[int(m.group(1))], "image/png"
            if path == "/outlines.png" and content.outlines is not None:
                return content.outlines, "image/png"
            return None

    return Handler


def serve(content: ViewerContent, port: int = 0, log: list | None = None) -> ThreadingHTTPServer:
    """A server for ``content`` bound to 127.0.0.1 (``port`` 0: any free port); call ``serve_forever``."""
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(content, log))
    server.daemon_threads = True
    return server
