"""The pinned benchmark problem (issue contract): d = 16, depth 3, width 16, r = linspace(0.9, 0.2),
b = linspace(0.5, 2.0), a = r b, balanced init with per-layer singular value 0.05."""

from __future__ import annotations

import numpy as np

PINNED = dict(dim=16, depth=3, width=16, init_scale=0.05)


def pinned_moments() -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the pinned problem."""
    ratios = np.linspace(0.9, 0.2, PINNED["dim"])
    second_moment = np.linspace(0.5, 2.0, PINNED["dim"])
    return ratios * second_moment, second_moment
