"""Stage 4, results on disk: heatmaps and overlays, atomic file writes."""
