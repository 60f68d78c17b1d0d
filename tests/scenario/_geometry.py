"""Geometry checks shared by the scenario tests (written independently of the generator's own)."""

from __future__ import annotations

import numpy as np


def bev_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex BEV quadrilaterals (4, 2); touching counts as overlap."""
    for poly in (a, b):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True
