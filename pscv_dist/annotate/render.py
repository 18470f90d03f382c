"""Slices as PNG images: the image through a window, and label maps as coloured overlays."""
from __future__ import annotations

import io

import numpy as np

# class 0 (background) grey; then well separated colours (Sasha Trubetskoy's list), cycled
PALETTE = ["#a0a0a0", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000",
           "#ffd8b1", "#000075"]


def class_colors(k: int) -> list[str]:
    return [PALETTE[0]] + [PALETTE[1 + (i % (len(PALETTE) - 1))] for i in range(k - 1)]


def _png(array: np.ndarray) -> bytes:
    """(H, W) uint8 -> greyscale PNG, (H, W, 4) uint8 -> RGBA PNG (fast compression: local use)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def window(slice_: np.ndarray, level: float, width: float) -> np.ndarray:
    """uint8 grey values: ``level - width / 2`` -> 0, ``level + width / 2`` -> 255, clipped."""
    lo = level - width / 2
    scaled = (slice_.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def slice_png(slice_: np.ndarray, level: float, width: float) -> bytes:
    """An 8-bit greyscale PNG of one (H, W) slice through the window."""
    return _png(window(slice_, level, width))


def overlay_png(labels: np.ndarray, k: int) -> bytes:
    """An RGBA PNG of one (H, W) label slice: class c > 0 in its colour, background and "no label"
    (values >= K) transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for c, color in enumerate(class_colors(k)):
        if c > 0:
            lut[c] = [int(color[i:i + 2], 16) for i in (1, 3, 5)] + [255]
    return _png(lut[labels.astype(np.uint8)])
