"""The segmentation network."""
from .unet import UNet

__all__ = ["UNet"]
