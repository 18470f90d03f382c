"""pscv-dist: point-supervised contrastive variance (PSCV) segmentation, distributed."""
__version__ = "0.1.0"
