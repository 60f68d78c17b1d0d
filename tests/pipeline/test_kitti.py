"""Ground segmentation and evidential occupancy on real KITTI HDL-64 scans with their labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.pipeline.ground import GroundEstimate, estimate_ground
from perception_nodes.pipeline.occupancy import (
    BetaGrid,
    GridSpec,
    OccupancyParams,
    evidential_occupancy,
    to_occupancy_msg_data,
)

from ._kitti import FRAMES, KITTI_OBJECT_DIR, KITTI_SENSOR_HEIGHT, KittiFrame, kitti_available, load_frame

pytestmark = pytest.mark.skipif(
    not kitti_available(), reason=f"KITTI object frames not found under {KITTI_OBJECT_DIR}"
)

#: The KITTI car's own body (roof rack, hood) seen by the Velodyne, in base_link.
EGO_BOX = (-2.5, 2.7, -1.7, 1.7)
SENSOR = (0.0, 0.0, KITTI_SENSOR_HEIGHT)


@dataclass(frozen=True)
class Result:
    frame: KittiFrame
    ground: GroundEstimate
    grid: BetaGrid
    prob: np.ndarray
    vac: np.ndarray


@pytest.fixture(scope="module", params=FRAMES)
def result(request: pytest.FixtureRequest) -> Result:
    frame = load_frame(request.param)
    est = estimate_ground(frame.points)
    grid = evidential_occupancy(
        frame.points,
        est.mask,
        SENSOR,
        GridSpec(),
        OccupancyParams(ego_box=EGO_BOX),
        height_above_ground=est.height,
    )
    prob, vac = to_occupancy_msg_data(grid)
    return Result(frame, est, grid, prob, vac)


def _objects(
    frame: KittiFrame, max_range: float = np.inf, min_points: int = 10
) -> list[tuple[Box3D, np.ndarray]]:
    out = []
    for box in frame.boxes:
        inside = box.contains(frame.points)
        if inside.sum() >= min_points and np.hypot(*box.center[:2]) <= max_range:
            out.append((box, inside))
    return out


def test_labels_convert_to_base_link() -> None:
    # frame 000000: the single pedestrian stands about 8.9 m ahead-right, on the ground, 377 points inside
    frame = load_frame("000000")
    (ped,) = frame.boxes
    assert ped.label == "Pedestrian"
    assert ped.size == pytest.approx((1.20, 0.48, 1.89))
    assert ped.center[0] == pytest.approx(8.7, abs=0.2) and ped.center[1] == pytest.approx(-1.85, abs=0.2)
    assert ped.center[2] - ped.size[2] / 2 == pytest.approx(0.0, abs=0.2)  # bottom on the road
    assert ped.contains(frame.points).sum() == pytest.approx(376, abs=3)
    # frame 000001 has 3 labelled objects besides its DontCare lines
    assert [b.label for b in load_frame("000001").boxes] == ["Truck", "Car", "Cyclist"]


def test_low_points_near_the_car_are_ground(result: Result) -> None:
    pts = result.frame.points
    rng = np.hypot(pts[:, 0], pts[:, 1])
    low = (pts[:, 2] < 0.15) & (rng < 20) & (rng > 3)
    assert low.sum() > 20_000
    assert result.ground.mask[low].mean() >= 0.95


def test_labelled_objects_are_not_ground(result: Result) -> None:
    # within 50 m (farther, a truck's lower edge seen by one laser 4 m beyond the last ground ring is
    # indistinguishable from a ramp); points 0.3 m above the box bottom, i.e. clear of the feet/tyres
    mask = result.ground.mask
    for box, inside in _objects(result.frame, max_range=50.0, min_points=10):
        bottom = box.center[2] - box.size[2] / 2
        upper = inside & (result.frame.points[:, 2] > bottom + 0.3)
        assert upper.sum() >= 10
        assert (~mask[upper]).mean() >= 0.95, box.label


def test_pooled_in_box_points_mostly_non_ground() -> None:
    # all labelled objects of all three frames with >= 10 points at any range, all their points (feet
    # and tyres included)
    inside_total, non_ground = 0, 0
    for name in FRAMES:
        frame = load_frame(name)
        mask = estimate_ground(frame.points).mask
        for _, inside in _objects(frame):
            inside_total += int(inside.sum())
            non_ground += int((~mask[inside]).sum())
    assert inside_total > 1500
    assert non_ground / inside_total >= 0.9


def test_nearby_objects_are_occupied(result: Result) -> None:
    spec = result.grid.spec
    cx, cy = spec.cell_centers()
    p = result.grid.probability()
    for box, _ in _objects(result.frame, max_range=40.0):
        z = np.full(cx.size, box.center[2])
        footprint = box.contains(np.c_[cx.ravel(), cy.ravel(), z]).reshape(cx.shape)
        assert footprint.any(), box.label
        assert (p[footprint] >= 0.65).sum() >= 1, box.label
        assert (result.prob[footprint] >= 65).any(), box.label


def test_no_free_evidence_leaks_into_shadows(result: Result) -> None:
    """Behind an object (central half of its azimuth span, 0.5–5 m beyond it), cells that no return
    landed in have no evidence at all; cells with returns there (ground seen between a pedestrian's legs,
    a wall behind) keep only their own hit evidence."""
    pts = result.frame.points
    spec = result.grid.spec
    cx, cy = spec.cell_centers()
    row, col, inside = spec.cell_index(pts[:, 0], pts[:, 1])
    has_return = np.zeros(spec.shape, bool)
    has_return[row[inside], col[inside]] = True
    checked = 0
    for box, in_box in _objects(result.frame, max_range=40.0):
        obj = in_box & ~result.ground.mask
        az = np.arctan2(pts[obj, 1], pts[obj, 0])
        far = np.hypot(pts[obj, 0], pts[obj, 1]).max()
        mid = np.median(az)
        lo, hi = np.percentile(az - mid, [25, 75])
        daz = np.angle(np.exp(1j * (np.arctan2(cy, cx) - mid)))
        rho = np.hypot(cx, cy)
        shadow = (daz > lo) & (daz < hi) & (rho > far + 0.5) & (rho < far + 5.0)
        empty = shadow & ~has_return
        checked += int(empty.sum())
        assert (result.grid.occupied[empty] == 0).all() and (result.grid.free[empty] == 0).all(), box.label
        assert (result.vac[empty] == 100).all()
        assert (result.prob[empty] == -1).all()
    if result.frame.name in ("000000", "000002"):
        assert checked >= 5


def test_lane_ahead_is_free(result: Result) -> None:
    cx, cy = result.grid.spec.cell_centers()
    lane = (cx > 4.0) & (cx < 10.0) & (np.abs(cy) < 1.0)
    free = (result.prob >= 0) & (result.prob < 50)
    assert free[lane].mean() >= 0.9


def test_surroundings_mostly_observed(result: Result) -> None:
    cx, cy = result.grid.spec.cell_centers()
    near = np.hypot(cx, cy) < 10.0
    known = result.prob >= 0
    assert known[near].mean() >= 0.5
    # the ego footprint (crossed by every ray) is free
    ego = (np.abs(cx) < 1.5) & (np.abs(cy) < 0.8)
    assert ((result.prob[ego] >= 0) & (result.prob[ego] < 50)).all()
