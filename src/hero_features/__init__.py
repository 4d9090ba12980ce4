"""hero-features: per-clip video features faithful to the HERO reference extractor."""

__version__ = "0.1.0"
