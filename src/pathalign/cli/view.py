"""``pathalign view``: options → :func:`pathalign.viewer.server.serve`; the page and its safety:
:mod:`pathalign.viewer.server` (its docstring is this verb's ``--help``).
"""
from __future__ import annotations

import argparse
import sys

#: the library module whose docstring is ``--help``'s description
DOC_FROM = "pathalign.viewer.server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide", help="the slide file (.svs, .tiff, ... as OpenSlide or tiffslide read it)")
    p.add_argument("--heatmap", default=None, help="<slide>.heatmaps.h5 from 'pathalign heatmap' (default: none)")
    p.add_argument("--embeddings", default=None,
                   help="embeddings.h5 from 'pathalign embed': the patient's nearest neighbours (default: none)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free one; default: 8765)")


def run(args: argparse.Namespace) -> int:
    from ..viewer.server import ViewerError, prepare, serve

    content = prepare(args.slide, args.heatmap, args.embeddings)
    try:
        server = serve(content, args.port)
    except OSError as e:
        raise ViewerError(f"cannot listen on 127.0.0.1:{args.port} ({e}); try --port 0") from None
    print(f"pathalign view: http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
