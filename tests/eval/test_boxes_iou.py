"""Rotated BEV / 3D IoU against hand-computed overlaps and an independent polygon-clipping oracle."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.boxes import Box3D
from perception_nodes.eval.metrics.boxes_iou import (
    bev_iou,
    box_iou,
    boxes_to_array,
    iou_3d,
    pairwise_iou,
    rect_corners,
)


def box(x=0.0, y=0.0, z=0.0, l=4.0, w=2.0, h=1.5, yaw=0.0, label="Car", score=1.0) -> Box3D:
    return Box3D(label, (x, y, z), (l, w, h), yaw, score=score)


# ---- oracle: Sutherland-Hodgman clipping of one convex polygon by another, in plain Python ----------
def _clip(subject: list[tuple[float, float]], clipper: list[tuple[float, float]]) -> list[tuple[float, float]]:
    def side(p, a, b):  # > 0: p left of a->b (inside for a CCW clipper)
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = subject
    for i in range(len(clipper)):
        a, b = clipper[i], clipper[(i + 1) % len(clipper)]
        inp, out = out, []
        if not inp:
            break
        for j in range(len(inp)):
            p, q = inp[j], inp[(j + 1) % len(inp)]
            sp, sq = side(p, a, b), side(q, a, b)
            if sp >= 0:
                out.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _area(poly) -> float:
    return 0.5 * abs(sum(poly[i][0] * poly[(i + 1) % len(poly)][1] - poly[(i + 1) % len(poly)][0] * poly[i][1]
                         for i in range(len(poly)))) if len(poly) >= 3 else 0.0


def oracle_iou(a: Box3D, b: Box3D, metric: str) -> float:
    pa = [tuple(p) for p in a.corners_xy()]
    pb = [tuple(p) for p in b.corners_xy()]
    inter = _area(_clip(pa, pb))
    area_a, area_b = a.size[0] * a.size[1], b.size[0] * b.size[1]
    if metric == "bev":
        return inter / (area_a + area_b - inter)
    lo = max(a.center[2] - a.size[2] / 2, b.center[2] - b.size[2] / 2)
    hi = min(a.center[2] + a.size[2] / 2, b.center[2] + b.size[2] / 2)
    inter *= max(0.0, hi - lo)
    return inter / (area_a * a.size[2] + area_b * b.size[2] - inter)


# ---- hand-computed cases ------------------------------------------------------------------------------
def test_axis_aligned_partial_overlap():
    a = box(0, 0, 0, 4, 2, 2)
    b = box(1, 0.5, 0, 4, 2, 2)
    # x: [-2, 2] & [-1, 3] -> 3; y: [-1, 1] & [-0.5, 1.5] -> 1.5; intersection 4.5, areas 8 + 8
    assert box_iou(a, b, "bev") == pytest.approx(4.5 / 11.5, abs=1e-12)
    assert box_iou(a, b, "3d") == pytest.approx(4.5 * 2 / (16 + 16 - 9), abs=1e-12)
    c = box(1, 0.5, 1.0, 4, 2, 2)  # z: [-1, 1] & [0, 2] -> 1
    assert box_iou(a, c, "3d") == pytest.approx(4.5 / (16 + 16 - 4.5), abs=1e-12)
    assert box_iou(a, c, "bev") == pytest.approx(4.5 / 11.5, abs=1e-12)


def test_square_rotated_45_degrees():
    # Side-2 squares, same centre, one at 45 deg: the overlap is a regular octagon. The rotated square's
    # corners stick out by sqrt(2) - 1 past each side, cutting off four right isosceles triangles of area
    # (sqrt(2) - 1)^2, so intersection = 4 - 4 (sqrt(2) - 1)^2 = 8 sqrt(2) - 8 and IoU = 1 / sqrt(2).
    a = box(3, -2, 0, 2, 2, 1)
    b = box(3, -2, 0, 2, 2, 1, yaw=math.pi / 4)
    inter = 8 * math.sqrt(2) - 8
    assert box_iou(a, b, "bev") == pytest.approx(inter / (8 - inter), abs=1e-12)
    assert box_iou(a, b, "bev") == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert box_iou(a, b, "3d") == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_crossed_rectangles_and_symmetric_yaws():
    a = box(0, 0, 0, 4, 2, 1)
    b = box(0, 0, 0, 4, 2, 1, yaw=math.pi / 2)  # a 2 x 2 square in common
    assert box_iou(a, b, "bev") == pytest.approx(4 / 12, abs=1e-12)
    assert box_iou(a, box(0, 0, 0, 4, 2, 1, yaw=math.pi), "3d") == pytest.approx(1.0, abs=1e-12)
    assert box_iou(a, box(0, 0, 0, 4, 2, 1, yaw=-2 * math.pi), "3d") == pytest.approx(1.0, abs=1e-12)


def test_contained_box_and_disjoint_or_touching_boxes():
    big = box(10, 10, 0, 6, 4, 2, yaw=0.3)
    small = box(10, 10, 0, 2, 1, 1, yaw=1.1)
    assert box_iou(big, small, "bev") == pytest.approx(2 / 24, abs=1e-12)
    assert box_iou(big, small, "3d") == pytest.approx(2 / 48, abs=1e-12)
    assert box_iou(box(0, 0), box(10, 0), "bev") == 0.0
    assert box_iou(box(0, 0), box(4, 0), "bev") == pytest.approx(0.0, abs=1e-12)  # sharing an edge
    assert box_iou(box(0, 0, 0, h=1), box(0, 0, 1.0, h=1), "3d") == pytest.approx(0.0, abs=1e-12)  # stacked
    assert box_iou(box(0, 0, 0, h=1), box(0, 0, 1.0, h=1), "bev") == pytest.approx(1.0, abs=1e-12)


def test_matrix_shape_arrays_and_empty_inputs():
    a = [box(0, 0), box(1, 0), box(50, 50)]
    b = [box(0, 0), box(0.5, 0, yaw=0.2)]
    m = iou_3d(a, b)
    assert m.shape == (3, 2)
    assert m[0, 0] == pytest.approx(1.0)
    assert m[2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(pairwise_iou(boxes_to_array(a), boxes_to_array(b), "3d"), m)
    assert bev_iou([], b).shape == (0, 2)
    assert iou_3d(a, np.zeros((0, 7))).shape == (3, 0)
    with pytest.raises(ValueError):
        pairwise_iou(a, b, "2d")  # type: ignore[arg-type]


def test_corners_match_box3d_convention():
    b = box(1.5, -2.0, 0.3, 4.2, 1.8, 1.5, yaw=0.7)
    arr = boxes_to_array([b])
    np.testing.assert_allclose(rect_corners(arr[:, :2], arr[:, 3:5], arr[:, 6])[0], b.corners_xy(), atol=1e-12)


def test_hundreds_of_boxes_fast_and_matches_oracle_on_a_sample():
    rng = np.random.default_rng(3)
    n = 300
    arr = np.column_stack([rng.uniform(0, 40, (n, 2)), rng.uniform(-1, 1, n), rng.uniform(0.5, 5, (n, 3)),
                           rng.uniform(-math.pi, math.pi, n)])
    t0 = time.perf_counter()
    m = iou_3d(arr, arr)
    assert time.perf_counter() - t0 < 2.0
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    boxes = [Box3D("Car", tuple(r[:3]), tuple(r[3:6]), float(r[6])) for r in arr]
    ii, jj = np.nonzero(np.triu(m, 1) > 0)
    assert ii.size > 20
    for i, j in list(zip(ii, jj))[:40]:
        assert m[i, j] == pytest.approx(oracle_iou(boxes[i], boxes[j], "3d"), abs=1e-9)


# ---- properties -----------------------------------------------------------------------------------
coord = st.floats(-5, 5, allow_nan=False)
dim = st.floats(0.2, 6, allow_nan=False)
angle = st.floats(-math.pi, math.pi, allow_nan=False)
boxes_st = st.builds(lambda x, y, z, l, w, h, yaw: box(x, y, z, l, w, h, yaw), coord, coord,
                     st.floats(-1, 1, allow_nan=False), dim, dim, dim, angle)


@settings(max_examples=150, deadline=None)
@given(boxes_st, boxes_st)
def test_iou_properties_and_oracle(a, b):
    for metric in ("bev", "3d"):
        ab, ba = box_iou(a, b, metric), box_iou(b, a, metric)
        assert 0.0 <= ab <= 1.0
        assert ab == pytest.approx(ba, abs=1e-9)
        assert ab == pytest.approx(oracle_iou(a, b, metric), abs=1e-9)
        assert box_iou(a, a, metric) == pytest.approx(1.0, abs=1e-9)
    # 3D IoU never exceeds BEV IoU (the vertical overlap is at most each box's height)
    assert box_iou(a, b, "3d") <= box_iou(a, b, "bev") + 1e-12


@pytest.mark.parametrize("yaw", [0.0, 1e-9, -1e-9, math.pi / 2, 2.0])
def test_collinear_edges_and_near_degenerate_angles(yaw):
    # Same width, shifted 1 m along the length: the long edges are collinear. Overlap 3 x 2 of 8 + 8.
    c, s = math.cos(yaw), math.sin(yaw)
    a = box(0, 0, 0, 4, 2, 1, yaw=yaw)
    b = box(c, s, 0, 4, 2, 1, yaw=yaw)
    assert box_iou(a, b, "bev") == pytest.approx(6 / 10, abs=1e-9)
    assert box_iou(a, b, "3d") == pytest.approx(6 / 10, abs=1e-9)
