"""The slide viewer: deep-zoom tiles with heatmap overlays on a local page (``pathalign view``)."""
