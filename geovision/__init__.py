"""geovision: find, count and measure things in large georeferenced imagery."""
__version__ = "0.1.0"
