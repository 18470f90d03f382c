"""Slice-by-slice prediction of a volume, exactly as METHOD.md's evaluation protocol says: resize
each slice to the training size (bilinear), argmax of the network, resize back (nearest)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.volumes import resize_image, resize_label
from ..errors import DataError


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a module's input must have: that of its first floating parameter (bfloat16 after
    DeepSpeed's bf16 mode cast it, float32 otherwise)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@torch.no_grad()
def predict_volume(model: torch.nn.Module, image: np.ndarray, size: int, batch_size: int = 16,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """(Z, H, W) normalised image -> (Z, H, W) uint8 label map at the native resolution."""
    if image.ndim != 3:
        raise DataError(f"expected a (Z, H, W) volume, got shape {image.shape}")
    model.eval()
    dtype = input_dtype(model)
    z, h, w = image.shape
    resized = resize_image(image, (size, size))
    out = np.empty((z, size, size), dtype=np.uint8)
    for start in range(0, z, batch_size):
        x = torch.from_numpy(resized[start:start + batch_size])[:, None].to(device=device, dtype=dtype)
        out[start:start + batch_size] = model(x).argmax(1).to(torch.uint8).cpu().numpy()
    return resize_label(out, (h, w))
