"""Box refinement (perception_nodes/pipeline/box_refine.py): headings and placement fitted to a box's points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.config import ConfigError
from perception_nodes.pipeline.box_refine import BoxRefinement, fit_heading, refine_detections
from perception_nodes.models.decode import Detections

CLASSES = ("car", "pedestrian", "cyclist")


def _surface(center, size, yaw, faces=("rear", "left"), spacing=0.05, rng=None, noise=0.0):
    """Points on the vertical faces of a box seen by a sensor (rear = -x face in the box frame), at 3 heights
    inside the box (none at its floor), plus optional Gaussian noise."""
    l, w, h = size
    rows = []
    for face in faces:
        if face == "rear":
            s = np.arange(-w / 2, w / 2 + 1e-9, spacing)
            u, v = np.full_like(s, -l / 2), s
        elif face == "left":
            s = np.arange(-l / 2, l / 2 + 1e-9, spacing)
            u, v = s, np.full_like(s, w / 2)
        else:
            raise ValueError(face)
        for z in (-0.2 * h, 0.0, 0.3 * h):
            c, sn = math.cos(yaw), math.sin(yaw)
            rows.append(np.column_stack([center[0] + c * u - sn * v, center[1] + sn * u + c * v,
                                         np.full_like(u, center[2] + z), np.full_like(u, 0.3)]))
    p = np.concatenate(rows).astype(np.float64)
    if noise and rng is not None:
        p[:, :3] += rng.normal(0.0, noise, (len(p), 3))
    return p.astype(np.float32)


def _dets(centers, sizes, yaws, labels):
    n = len(centers)
    cov = np.tile(np.eye(6, dtype=np.float32) * 0.1, (n, 1, 1))
    probs = np.full((n, len(CLASSES) + 1), 0.1, np.float32)
    return Detections(class_names=CLASSES, center=np.asarray(centers, np.float32), size=np.asarray(sizes, np.float32),
                      yaw=np.asarray(yaws, np.float32), label=np.asarray(labels, np.int64),
                      score=np.full(n, 0.8, np.float32), class_probabilities=probs,
                      vacuity=np.full(n, 0.2, np.float32), covariance=cov,
                      size_variance=np.full((n, 3), 0.01, np.float32))


def _err_deg(a, b):
    """Heading difference modulo 180 degrees (IoU does not see the direction)."""
    return abs(math.degrees(math.remainder(a - b, math.pi)))


def test_fit_heading_finds_an_exact_rectangle_on_the_search_grid():
    """Noise-free points on two faces: every point lies on an edge only at the true angle, so the closeness
    score peaks there; the truth sits on the search grid (prior + 17 steps) and is found to rounding."""
    truth = 0.4
    pts = _surface((20.0, 5.0, 0.0), (4.5, 1.8, 1.5), truth)
    prior = truth - math.radians(17.0)
    got = fit_heading(pts[:, :2].astype(np.float64), prior, 30.0, 1.0)
    assert got == pytest.approx(truth, abs=1e-9)


@pytest.mark.parametrize("offset_deg", [-25.0, -8.0, 12.0, 25.0])
def test_end_on_rear_face_gives_the_heading_the_network_missed(offset_deg):
    """A car seen end-on 35 m ahead shows only its rear face (a 1.8 m segment, 3 cm noise): the rectangle fit
    puts the heading within a few degrees of the truth however far (within the search) the prior is off. (A
    single noisy segment is the fit's weakest case: turning it by 3 degrees moves its ends by 5 cm, about the
    noise; at IoU 0.7 a 4.5 m car tolerates roughly 5-10 degrees.)"""
    rng = np.random.default_rng(3)
    yaw = math.radians(5.0)
    center = (35.0, 2.0, -0.9)
    pts = _surface(center, (4.5, 1.8, 1.5), yaw, faces=("rear",), rng=rng, noise=0.03)
    det = _dets([center], [(4.5, 1.8, 1.5)], [yaw + math.radians(offset_deg)], [0])
    out, n = refine_detections(det, pts)
    assert n == 1
    assert _err_deg(float(out.yaw[0]), yaw) < 4.0
    assert _err_deg(float(det.yaw[0]), yaw) == pytest.approx(abs(offset_deg), abs=1e-4)  # the input was off


def test_only_refined_classes_with_enough_points_change_and_nothing_else_does():
    rng = np.random.default_rng(0)
    size = (4.2, 1.8, 1.5)
    car_a = ((15.0, -3.0, -0.9), 0.3)
    car_b = ((40.0, 10.0, -0.9), -0.2)  # no points near it
    ped = ((8.0, 4.0, -0.9), 1.0)
    pts = np.concatenate([_surface(car_a[0], size, car_a[1], rng=rng, noise=0.02),
                          _surface(ped[0], (0.8, 0.7, 1.7), ped[1], rng=rng, noise=0.02)])
    det = _dets([car_a[0], car_b[0], ped[0]], [size, size, (0.8, 0.7, 1.7)],
                [car_a[1] + 0.25, car_b[1] + 0.25, ped[1] + 0.25], [0, 0, 1])
    out, n = refine_detections(det, pts)
    assert n == 1
    assert _err_deg(float(out.yaw[0]), car_a[1]) < 1.0
    assert out.yaw[1] == det.yaw[1] and out.yaw[2] == det.yaw[2]  # too few points; not a refined class
    np.testing.assert_array_equal(out.center[1:], det.center[1:])
    np.testing.assert_array_equal(out.size[1:], det.size[1:])
    assert out.size[0, 2] == det.size[0, 2]  # the height is never touched (only length and width, by the faces)
    for name in ("score", "covariance", "class_probabilities", "vacuity", "size_variance", "label"):
        np.testing.assert_array_equal(getattr(out, name), getattr(det, name))
    # without the near-face step the size stays as decoded
    np.testing.assert_array_equal(refine_detections(det, pts, BoxRefinement(near_faces=False))[0].size, det.size)
    assert out.center.dtype == np.float32 and out.yaw.dtype == np.float32
    # the input is not modified
    assert det.yaw[0] == np.float32(car_a[1] + 0.25)


def test_min_points_and_ground_clearance_gate_the_fit():
    center, size, yaw = (12.0, 0.0, -0.9), (4.5, 1.8, 1.5), 0.1
    pts = _surface(center, size, yaw, faces=("rear",), spacing=0.6)  # 4 points per height: 12 in all
    det = _dets([center], [size], [yaw + 0.1], [0])
    assert refine_detections(det, pts, BoxRefinement(min_points=13))[1] == 0
    assert refine_detections(det, pts, BoxRefinement(min_points=12))[1] == 1
    # road points under the car (at its floor) never count, so they cannot turn the box
    road = np.column_stack([np.random.default_rng(1).uniform(9, 15, (400, 2)), np.full((400, 1), center[2] - 0.75),
                            np.zeros((400, 1))]).astype(np.float32)
    assert refine_detections(det, road)[1] == 0


def test_shift_moves_the_box_to_hold_its_points_and_keeps_its_size():
    """The network put the box 0.25 m too far: the rear-face points stick out of it, and the refined box moves
    back until it holds them (to the percentile), length unchanged. Only points within ``margin_m`` of the box
    count, so a box never moves further than that: 0.6 m off, it moves by the 0.3 m margin."""
    yaw, size = 0.0, (4.5, 1.8, 1.5)
    truth = (20.0, 0.0, -0.9)
    pts = _surface(truth, size, yaw)
    det = _dets([(20.25, 0.0, -0.9)], [size], [yaw], [0])
    shift_only = BoxRefinement(percentile=0.0, near_faces=False)
    out, n = refine_detections(det, pts, shift_only)
    assert n == 1
    assert float(out.center[0, 0]) == pytest.approx(truth[0], abs=1e-3)
    assert float(out.center[0, 1]) == pytest.approx(0.0, abs=1e-3)  # across: points already inside
    np.testing.assert_array_equal(out.size, det.size)
    far, _ = refine_detections(_dets([(20.6, 0.0, -0.9)], [size], [yaw], [0]), pts, shift_only)
    moved = 20.6 - float(far.center[0, 0])
    assert 0.2 < moved <= 0.3 + 1e-5  # the nearest point within the margin sits one 5 cm spacing from its edge
    off, _ = refine_detections(det, pts, BoxRefinement(shift_to_points=False, percentile=0.0, near_faces=False))
    np.testing.assert_array_equal(off.center, det.center)


def test_non_finite_points_are_ignored_and_bad_clouds_leave_the_boxes():
    rng = np.random.default_rng(2)
    center, size, yaw = (18.0, 3.0, -0.9), (4.5, 1.8, 1.5), 0.5
    pts = _surface(center, size, yaw, rng=rng, noise=0.02)
    det = _dets([center], [size], [yaw - 0.3], [0])
    ref, _ = refine_detections(det, pts)
    bad = np.concatenate([pts, np.array([[np.nan, 3.0, 0.0, 0.1], [18.0, np.inf, 0.0, 0.1], [18.0, 3.0, np.nan, 0.0]],
                                        np.float32)])
    got, _ = refine_detections(det, bad)
    np.testing.assert_array_equal(got.yaw, ref.yaw)
    np.testing.assert_array_equal(got.center, ref.center)
    for cloud in (np.zeros((0, 4), np.float32), np.full((50, 4), np.nan, np.float32), np.zeros((5,), np.float32)):
        same, n = refine_detections(det, cloud)
        assert n == 0 and same is det
    empty = Detections(class_names=CLASSES)
    assert refine_detections(empty, pts) == (empty, 0)
    off = BoxRefinement(enabled=False)
    assert refine_detections(det, pts, off) == (det, 0)


def test_params_from_a_mapping_with_clear_errors():
    assert BoxRefinement.from_mapping(None) == BoxRefinement()
    assert BoxRefinement.from_mapping(False) == BoxRefinement(enabled=False)
    got = BoxRefinement.from_mapping({"enabled": True, "classes": ["car", "cyclist"], "min_points": 5, "search_deg": 20})
    assert got.classes == ("car", "cyclist") and got.min_points == 5 and got.search_deg == 20.0
    with pytest.raises(ConfigError, match="unknown key.*serch_deg"):
        BoxRefinement.from_mapping({"serch_deg": 20})
    with pytest.raises(ConfigError, match="box_refinement.enabled: bad value"):
        BoxRefinement.from_mapping({"enabled": "yes"})
    with pytest.raises(ConfigError, match="step_deg must be in"):
        BoxRefinement.from_mapping({"step_deg": 0})
    with pytest.raises(ConfigError, match="search_deg must be in"):
        BoxRefinement(search_deg=120)
    with pytest.raises(ConfigError, match="must be a mapping"):
        BoxRefinement.from_mapping(3)


def test_the_params_file_default_is_the_code_default():
    """perception.params.yaml documents the node's defaults; they must be the dataclass's (one place)."""
    from perception_nodes.config import DEFAULTS_PATH
    import yaml

    params = yaml.safe_load(DEFAULTS_PATH.read_text())["lidar_detection"]["ros__parameters"]["box_refinement"]
    assert BoxRefinement.from_mapping(params) == BoxRefinement()


def test_near_faces_put_the_seen_faces_on_the_points_and_keep_the_far_ones():
    """A car ahead and to the left of the sensor (at the origin) shows its rear face and its right (-y) side. The
    network's box has its rear 0.15 m behind the points, its front 0.2 m too far and is 0.1 m too wide. The seen
    faces (rear, right side) move onto the points plus the surface offset; the unseen ones (front, left side) stay
    where the network put them, so length and width change."""
    yaw, size = 0.0, (4.0, 1.8, 1.5)
    truth = (20.0, 3.0, -0.9)  # rear face at x = 18.0, right (-y) side at y = 2.1
    rear = _surface(truth, size, yaw, faces=("rear",))
    side = _surface(truth, size, yaw, faces=("left",))  # the +y side ...
    side[:, 1] = 2 * truth[1] - side[:, 1]  # ... mirrored onto the -y side, which a sensor at y = 0 sees
    pts = np.concatenate([rear, side])
    det = _dets([((17.85 + 22.2) / 2, 3.05, -0.9)], [(22.2 - 17.85, 1.9, 1.5)], [yaw], [0])
    p = BoxRefinement(percentile=0.0, shift_to_points=False, search_deg=5.0)
    out, n = refine_detections(det, pts, p, sensor_xy=(0.0, 0.0))
    assert n == 1 and float(out.yaw[0]) == pytest.approx(yaw, abs=1e-6)
    x0, x1 = float(out.center[0, 0] - out.size[0, 0] / 2), float(out.center[0, 0] + out.size[0, 0] / 2)
    y0, y1 = float(out.center[0, 1] - out.size[0, 1] / 2), float(out.center[0, 1] + out.size[0, 1] / 2)
    assert x0 == pytest.approx(18.0 - p.surface_offset_m, abs=1e-4)  # seen rear: on the points
    assert x1 == pytest.approx(22.2, abs=1e-4)  # unseen front: kept
    assert y0 == pytest.approx(2.1 - p.surface_offset_m, abs=1e-4)  # seen side: on the points
    assert y1 == pytest.approx(3.05 + 0.95, abs=1e-4)  # unseen side: kept
    assert out.size[0, 2] == det.size[0, 2]
    # seen from straight ahead of the car (x = 60, inside its lateral slab): the front is the seen face along the
    # heading (no points there, so the rear stays), and across the box is centred on the points' span, width kept
    ahead, _ = refine_detections(det, pts, p, sensor_xy=(60.0, 3.0))
    assert float(ahead.center[0, 0] - ahead.size[0, 0] / 2) == pytest.approx(17.85, abs=1e-4)
    assert float(ahead.size[0, 1]) == pytest.approx(1.9, abs=1e-5)
    assert float(ahead.center[0, 1]) == pytest.approx(truth[1], abs=1e-3)


def test_near_faces_never_collapse_a_box():
    """Points only at the far end of the box (seen from behind) would leave less than min_extent_fraction of the
    half extent: that axis stays as it was."""
    yaw, size = 0.0, (4.0, 1.8, 1.5)
    centre = (20.0, 0.0, -0.9)
    rng = np.random.default_rng(5)
    pts = np.column_stack([rng.uniform(21.9, 22.0, 300), rng.uniform(-0.8, 0.8, 300), rng.uniform(-1.0, -0.2, 300),
                           np.zeros(300)]).astype(np.float32)
    det = _dets([centre], [size], [yaw], [0])
    p = BoxRefinement(percentile=0.0, shift_to_points=False, search_deg=1.0, step_deg=1.0)
    out, _ = refine_detections(det, pts, p, sensor_xy=(0.0, 0.0))
    assert float(out.size[0, 0]) == pytest.approx(4.0, abs=1e-6)
    assert float(out.center[0, 0]) == pytest.approx(20.0, abs=1e-6)


def test_bad_values_are_refused_with_their_source_named():
    """Values that would blow the fit up (an infinite margin, a step that makes millions of angles) or that would
    silently change meaning (a bool for a number, a fraction of a point, no class) are refused, and the message
    names where they came from."""
    for bad, msg in (({"margin_m": float("inf")}, "margin_m must be in"), ({"margin_m": 10}, "margin_m must be in"),
                     ({"step_deg": 1e-6}, "step_deg must be in"), ({"margin_m": True}, "margin_m: bad value"),
                     ({"min_points": 8.9}, "min_points: bad value"), ({"min_points": float("inf")}, "min_points: bad value"),
                     ({"classes": []}, "classes must name"), ({"closeness_floor_m": 0.0}, "closeness_floor_m must be in")):
        with pytest.raises(ConfigError, match=msg) as exc:
            BoxRefinement.from_mapping(bad, "lidar_detection.box_refinement")
        assert str(exc.value).startswith("lidar_detection.box_refinement")
    assert BoxRefinement.from_mapping({"min_points": 8.0}).min_points == 8
    assert BoxRefinement.from_mapping({"enabled": False, "classes": []}).enabled is False


def test_a_broken_box_does_not_stop_the_others():
    rng = np.random.default_rng(4)
    center, size, yaw = (15.0, -2.0, -0.9), (4.2, 1.8, 1.5), 0.2
    pts = _surface(center, size, yaw, rng=rng, noise=0.02)
    det = _dets([center, (np.nan, 0.0, -0.9)], [size, size], [yaw + 0.2, 0.0], [0, 0])
    out, n = refine_detections(det, pts)
    assert n == 1 and _err_deg(float(out.yaw[0]), yaw) < 1.0
    assert np.isnan(out.center[1, 0])  # left as it was


def test_the_point_prefilter_never_changes_a_result(monkeypatch):
    """The binned prefilter (_candidate_points) only saves time: with it replaced by "every point" the boxes are
    the same, also where steps 2-3 move a box far (random segments and blobs around random boxes, random
    sensor positions; such clouds move boxes by up to about 1.4 m with the default 0.3 m margin)."""
    import perception_nodes.pipeline.box_refine as br

    rng = np.random.default_rng(11)
    cases = []
    for _ in range(300):
        c = np.array([rng.uniform(5, 40), rng.uniform(-15, 15)])
        size = (rng.uniform(3.5, 5.0), rng.uniform(1.5, 2.0), 1.5)
        yaw = rng.uniform(-np.pi, np.pi)
        n = int(rng.integers(10, 200))
        a = rng.uniform(-3.0, 3.0, n) * rng.uniform(0.2, 1.0)
        b = rng.uniform(-1.5, 1.5, n) * rng.uniform(0.0, 1.0)
        t = yaw + rng.uniform(-0.6, 0.6)
        xy = c + np.column_stack([a * np.cos(t) - b * np.sin(t), a * np.sin(t) + b * np.cos(t)])
        pts = np.column_stack([xy, rng.uniform(-1.3, 0.5, n), np.zeros(n)]).astype(np.float32)
        clutter = np.column_stack([rng.uniform(-60, 60, 2000), rng.uniform(-60, 60, 2000), rng.uniform(-1.5, 1.0, 2000),
                                   np.zeros(2000)]).astype(np.float32)
        det = _dets([(c[0], c[1], -0.9)], [size], [yaw], [0])
        cases.append((det, np.concatenate([pts, clutter]), (rng.uniform(-5, 5), rng.uniform(-5, 5))))
    got = [refine_detections(d, p, sensor_xy=o)[0] for d, p, o in cases]
    monkeypatch.setattr(br, "_candidate_points", lambda pts, boxes, *_: [np.arange(len(pts))] * len(boxes))
    for (d, p, o), g in zip(cases, got, strict=True):
        ref, _ = refine_detections(d, p, sensor_xy=o)
        np.testing.assert_array_equal(g.center, ref.center)
        np.testing.assert_array_equal(g.size, ref.size)
        np.testing.assert_array_equal(g.yaw, ref.yaw)


def test_the_heading_fit_reads_a_capped_even_sample_of_a_dense_car():
    """A nearby car returns thousands of points; the fit reads an even stride of at most max_fit_points of them
    and finds the same heading (to the search step) as with all of them."""
    rng = np.random.default_rng(8)
    center, size, yaw = (7.0, 3.0, -0.9), (4.5, 1.8, 1.5), 0.35
    pts = _surface(center, size, yaw, spacing=0.005, rng=rng, noise=0.01)
    assert len(pts) > 3000
    det = _dets([center], [size], [yaw + 0.3], [0])
    capped, _ = refine_detections(det, pts)
    full, _ = refine_detections(det, pts, BoxRefinement(max_fit_points=100_000))
    assert abs(float(capped.yaw[0]) - float(full.yaw[0])) <= math.radians(1.0) + 1e-6
    assert _err_deg(float(capped.yaw[0]), yaw) < 1.0
    with pytest.raises(ConfigError, match="max_fit_points must be in"):
        BoxRefinement(min_points=20, max_fit_points=10)
