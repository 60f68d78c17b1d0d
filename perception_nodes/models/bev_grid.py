"""Geometry of the bird's-eye-view grid the detection heads predict on (shared by model, decoder, targets)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BevGrid:
    """A BEV grid in base_link: cell ``(iy, ix)`` covers ``[origin + i * cell, origin + (i + 1) * cell)``.

    Arrays on it are ``[..., height, width]`` = ``[..., y, x]``, the layout of ``engines.sparse.to_bev``
    and of ``nav_msgs/OccupancyGrid`` (row-major, x fastest).
    """

    origin_x: float
    origin_y: float
    cell: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if not (self.cell > 0 and self.width > 0 and self.height > 0):
            raise ValueError(f"BevGrid needs cell > 0 and a positive shape, got {self}")

    @property
    def size_x(self) -> float:
        return self.width * self.cell

    @property
    def size_y(self) -> float:
        return self.height * self.cell
