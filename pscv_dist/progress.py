"""Progress bars: live on a terminal, one line every 30 s in logs (Kubernetes, SLURM, CI)."""
from __future__ import annotations

import sys


def progress_bar(**kwargs):
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 30.0)
    return tqdm(**kwargs)
