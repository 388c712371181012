"""The benchmark (`clipav2 bench`): our training step against the open_clip baseline, timed on
the same inputs (docs/performance.md)."""
