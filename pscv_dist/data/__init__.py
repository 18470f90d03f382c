"""Data: the store format, its writer (``pscv prepare``) and its reader (:class:`SliceStore`).

The names are loaded lazily (PEP 562) so that importing a light submodule, such as the pool-worker
set-up in :mod:`.lifeline`, does not import torch and zarr first.
"""
from __future__ import annotations

__all__ = ["SliceStore", "DataError"]


def __getattr__(name: str):
    if name == "SliceStore":
        from .store import SliceStore

        return SliceStore
    if name == "DataError":
        from ..errors import DataError

        return DataError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
