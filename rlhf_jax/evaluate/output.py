"""Small helpers shared by the report writers: folders, Markdown cells, JSON-able values."""

from __future__ import annotations

import math
import os

import numpy as np


def parent(path: str) -> None:
    """Create the folder of ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def clean(x):
    """JSON-able copy: NaN/inf -> None, tuples -> lists, NumPy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
