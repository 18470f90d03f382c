"""Evaluation (3D DSC / HD95) and inference."""
from .metrics import case_metrics, class_metrics, dice, hd95, summarize

__all__ = ["case_metrics", "class_metrics", "dice", "hd95", "summarize"]
