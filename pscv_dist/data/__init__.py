"""Data: the store format, its writer (``pscv prepare``) and its reader (:class:`SliceStore`)."""
from .store import SliceStore
from .volume_io import DataError

__all__ = ["SliceStore", "DataError"]
