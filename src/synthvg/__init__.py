"""synthvg: build dense, grounded scene-graph datasets (the Synthetic Visual Genome pipeline)."""

__version__ = "0.1.0"
