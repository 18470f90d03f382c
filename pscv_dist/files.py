"""Small file helpers every command shares: atomic JSON writes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON to a per-process temporary sibling, then rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
