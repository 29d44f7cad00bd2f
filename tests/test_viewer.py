"""``pathalign view``: only its own routes are served, on 127.0.0.1, and in a real browser (Chromium from the
system packages) the heatmap overlay appears where the patches are."""
from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest

from pathalign.io.heatmaps import SlideHeatmaps, write_heatmaps
from pathalign.viewer.server import prepare, serve
from slide_factory import BACKGROUND, blob_slide

SIZE = (3072, 2048)
PANEL = (170, 360)  # rows, columns of the screenshot the control panel may cover
PATCHES = [(2048, 1280), (2304, 1280), (2048, 1536), (2304, 1536), (2560, 1536)]  # level-0 top-left corners, 256 px


@pytest.fixture()
def viewer(tmp_path):
    slide, _ = blob_slide(tmp_path / "slide_v.tiff", size=SIZE)
    coords = np.array(PATCHES, np.int64)
    hm = SlideHeatmaps("slide_v", coords, np.array([0, 0, 0, 0, 1]), 256.0,
                       {"align/rna": np.linspace(0, 1, len(PATCHES)).astype(np.float32)})
    write_heatmaps(tmp_path / "slide_v.heatmaps.h5", hm)
    log: list[str] = []
    server = serve(prepare(slide, tmp_path / "slide_v.heatmaps.h5"), 0, log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], log
    server.shutdown()
    server.server_close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path)  # sent as written: no client-side normalisation of '..'
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_viewer_serves_its_routes_and_nothing_else(viewer):
    port, _ = viewer
    status, page = _get(port, "/")
    assert status == 200 and b"openseadragon.min.js" in page
    config = json.loads(page.split(b"const CONFIG = ", 1)[1].split(b";\n", 1)[0])
    assert config["scores"] == ["align/rna"] and config["has_outlines"]
    assert b"http://" not in page and b"https://" not in page  # every URL of the page is relative: 127.0.0.1 only
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", "/")
    assert conn.getresponse().getheader("Content-Security-Policy").startswith("default-src 'self'")
    assert _get(port, "/static/openseadragon.min.js")[1].startswith(b"//! openseadragon 6.1.1")
    status, dzi = _get(port, "/slide.dzi")
    assert status == 200 and b'Width="3072"' in dzi and b'Height="2048"' in dzi
    status, tile = _get(port, "/slide_files/12/2_1.jpeg")
    assert status == 200 and tile[:2] == b"\xff\xd8"  # a JPEG
    assert _get(port, "/overlay/0.png")[1][:4] == b"\x89PNG"
    for path in ("/static/../server.py", "/static/../../../../etc/passwd", "/../../etc/passwd", "/etc/passwd",
                 "/slide_files/12/99_99.jpeg", "/slide_files/99/0_0.jpeg", "/overlay/1.png", "/static/page.html",
                 "/slide_files/12/../../../etc/passwd"):
        assert _get(port, path)[0] == 404, path


class _Sink(http.server.BaseHTTPRequestHandler):
    """A stand-in proxy on the loopback: whatever Chromium itself tries to reach off the machine (its update, time
    and sign-in services) ends here, refused, instead of leaving 127.0.0.1."""

    def do_GET(self):  # noqa: N802
        self.send_error(502)

    do_CONNECT = do_GET

    def log_message(self, *args):
        pass


def _chromium(url: str, out, proxy_port: int, *action: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=900,600",
           f"--proxy-server=http://127.0.0.1:{proxy_port}", "--virtual-time-budget=15000",
           # Chromium's own services (updates, sync, time, sign-in) off, so the proxy sees only the page's requests
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-default-apps", "--disable-domain-reliability", "--no-pings", "--metrics-recording-only",
           "--disable-client-side-phishing-detection", "--disable-features=OptimizationHints,Translate,MediaRouter",
           f"--user-data-dir={out.parent / 'profile'}", *action, url]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(out.parent)})
    return proc.stdout


def _screenshot(url: str, out, proxy_port: int) -> np.ndarray:
    import cv2

    _chromium(url, out, proxy_port, f"--screenshot={out}")
    return cv2.imread(str(out))[:, :, ::-1]  # RGB [H, W, 3]


def _overlay_on_screen(shown: np.ndarray) -> tuple[np.ndarray, tuple, float, float]:
    """The overlay's pixels in a screenshot, where the patches should be on screen, and the slide's scale."""
    import cv2

    # where the slide is drawn: the part of the screenshot that is not the page's dark background
    img = shown.astype(int)
    bright = np.abs(img - 0x11).max(-1) > 30
    bright[:PANEL[0], :PANEL[1]] = False  # the panel floats over the top-left corner
    slide_px = np.nonzero(bright)
    left, top = slide_px[1].min(), slide_px[0].min()
    # per axis: headless Chromium may hand the page's canvas a stretched layout; the overlay must follow the slide
    sx, sy = (slide_px[1].max() + 1 - left) / SIZE[0], (slide_px[0].max() + 1 - top) / SIZE[1]
    xs = [x for x, _ in PATCHES]
    ys = [y for _, y in PATCHES]
    expected = (left + min(xs) * sx, top + min(ys) * sy, left + (max(xs) + 256) * sx, top + (max(ys) + 256) * sy)
    # overlay pixels: neither slide background, nor tissue (slide_factory's colours), nor white outline, nor page
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    tissue = (r > 125) & (r < 195) & (g > 65) & (g < 115) & (b > 140) & (b < 185)
    paper = (np.abs(img - np.array(BACKGROUND)).max(-1) < 25) | (img.min(-1) > 230)
    # an opening removes the one- or two-pixel blends at tissue and slide edges; the patch squares are ~60 px
    overlay = cv2.morphologyEx((bright & ~tissue & ~paper).astype(np.uint8), cv2.MORPH_OPEN,
                               np.ones((7, 7), np.uint8)).astype(bool)
    return overlay, expected, sx, sy


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Chromium from the system packages: apt-get install -y chromium (.ci/run does)")
def test_the_overlay_appears_where_the_patches_are_in_a_real_browser(viewer, tmp_path):
    port, log = viewer
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}/"
        # a busy machine can take the screenshot before the overlay image is drawn: up to three tries
        for attempt in range(3):
            shown = _screenshot(base + "?overlay=align/rna&opacity=1", tmp_path / f"shown{attempt}.png",
                                proxy.server_address[1])
            overlay, expected, sx, sy = _overlay_on_screen(shown)
            if overlay.sum() > 0.8 * len(PATCHES) * 256 * sx * 256 * sy:
                break
        dom = _chromium(base + "?overlay=align/rna&debug=resources", tmp_path / "dom.html", proxy.server_address[1],
                        "--dump-dom")
    finally:
        proxy.shutdown()
    fetched = json.loads(dom.split('<pre id="resources" hidden="">', 1)[1].split("</pre>", 1)[0])
    assert any("/overlay/0.png" in u for u in fetched) and any("/slide_files/" in u for u in fetched), fetched
    assert all(u.startswith(base) for u in fetched), [u for u in fetched if not u.startswith(base)]
    assert any(p.startswith("/slide_files/") for p in log) and "/overlay/0.png" in log, log
    assert overlay.sum() > 0.8 * len(PATCHES) * 256 * sx * 256 * sy, overlay.sum()
    rows, cols = np.nonzero(overlay)
    got = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert np.allclose(got, expected, atol=4), (got, expected)
