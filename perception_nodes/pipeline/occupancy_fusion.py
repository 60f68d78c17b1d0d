"""Combining the learned occupancy evidence of the LiDAR branch with the geometric (inverse sensor model) grid.

Both sources are Beta opinions per cell, held as evidence: ``r`` occupied, ``s`` free (see
:mod:`perception_nodes.evidential.beta`). The rule is subjective logic's *cumulative fusion* with trust
discounting of the learned source (field notes, section 4; Jøsang, Subjective Logic, ch. 12 and 14)::

    r = r_geo + w * r_learned        s = s_geo + w * s_learned        (w = learned_occupancy_weight)

Adding evidence is the fusion of *independent* sources. The two are not fully independent (the network
sees the same scan), so ``w`` <= 1 discounts the learned evidence; ``w = 0`` gives back the geometric grid,
and a cell neither source observed stays vacuous (unknown). The fused grid is published as probability
``(r + 1) / (r + s + 2)`` and vacuity ``2 / (r + s + 2)`` like the geometric one.

The geometric evidence comes from the occupancy node's published percentages ``P`` (0..100, -1 unknown)
and vacuity ``U`` (0..100): ``S = r + s + 2 = 200 / U``, ``r = P * S / 100 - 1``, ``s = S - 2 - r``
(:func:`evidence_from_grid_data`). The messages are rounded to whole percent, so the recovered evidence
carries that rounding: exact for an unobserved cell (``U = 100`` or ``P = -1``: no evidence), within a few
percent of the evidence for a well observed one.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from perception_nodes.pipeline.occupancy import GridSpec

__all__ = ["evidence_from_grid_data", "fuse_evidence", "resample_nearest"]


def evidence_from_grid_data(prob: np.ndarray, vac: np.ndarray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(r, s)`` per cell from an occupancy grid's ``P`` and its uncertainty grid's ``U`` (int8 percent)."""
    p = np.asarray(prob, dtype=np.float32)
    u = np.asarray(vac, dtype=np.float32)
    if p.shape != u.shape:
        raise ValueError(f"probability {p.shape} and vacuity {u.shape} grids differ in shape")
    known = (p >= 0) & (u > 0) & (u < 100)
    strength = np.where(known, 200.0 / np.where(known, u, 100.0), 2.0)  # S = 2 / (U / 100)
    r = np.where(known, p / 100.0 * strength - 1.0, 0.0)
    r = np.clip(r, 0.0, strength - 2.0)
    s = np.maximum(strength - 2.0 - r, 0.0)
    return r.astype(np.float32), s.astype(np.float32)


def resample_nearest(values: np.ndarray, src: GridSpec, dst: GridSpec, fill: float = 0.0) -> NDArray[np.float32]:
    """``values`` ``(..., H, W)`` on ``src`` onto ``dst``: each ``dst`` cell takes the ``src`` cell under its
    centre (``fill`` outside ``src``). Same grid: returned as is."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape[-2:] != src.shape:
        raise ValueError(f"values {values.shape[-2:]} do not match their grid {src.shape}")
    if src == dst or (src.shape == dst.shape and src.resolution == dst.resolution and src.origin == dst.origin):
        return values
    cx, cy = dst.cell_centers()
    row, col, inside = src.cell_index(cx.ravel(), cy.ravel())
    out = np.full(values.shape[:-2] + (dst.height * dst.width,), fill, dtype=np.float32)
    out[..., inside] = values[..., row[inside], col[inside]]
    return out.reshape(values.shape[:-2] + dst.shape)


def fuse_evidence(r_geo: np.ndarray, s_geo: np.ndarray, r_learned: np.ndarray, s_learned: np.ndarray,
                  weight: float) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Cumulative fusion with the learned source discounted by ``weight`` (see the module doc)."""
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    r = np.asarray(r_geo, np.float32) + np.float32(weight) * np.asarray(r_learned, np.float32)
    s = np.asarray(s_geo, np.float32) + np.float32(weight) * np.asarray(s_learned, np.float32)
    return r, s
