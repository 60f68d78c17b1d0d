"""KITTI levels for generated ground truth: virtual-camera box heights, occlusion from the generator's truth or
the scan's rays."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from perception_nodes.boxes import Box3D
from perception_nodes.eval.detection_eval import DetectionScorer
from perception_nodes.eval.generated_difficulty import (
    GROUND_MARGIN_M,
    KITTI_FOCAL_PX,
    occluded_fractions,
    occlusion_state,
    occlusion_truth,
    virtual_bbox2d,
    with_difficulty,
    with_virtual_bbox2d,
)
from perception_nodes.eval.metrics.kitti_difficulty import kitti_difficulty

ORIGIN = (0.0, 0.0, 1.0)


def _car(x: float, y: float = 0.0, yaw: float = 0.0, h: float = 1.5) -> Box3D:
    # bottom at z = 0.1, so the box spans the camera height (1.0) while h > 0.9
    return Box3D("car", (x, y, 0.1 + h / 2), (4.0, 1.8, h), yaw)


def _height(b: tuple[float, float, float, float]) -> float:
    return b[3] - b[1]


def test_box_height_is_focal_times_height_over_near_depth_at_any_azimuth():
    # top and bottom both seen at the near face: h_px = f * h / d_near
    for x in (12.0, 30.0, 50.0):
        got = _height(virtual_bbox2d(_car(x), ORIGIN))
        assert got == pytest.approx(KITTI_FOCAL_PX * 1.5 / (x - 2.0), rel=1e-12)
    # the same car turned with the camera about the sensor: the same height
    a = math.radians(70.0)
    turned = Box3D("car", (30.0 * math.cos(a), 30.0 * math.sin(a), 0.85), (4.0, 1.8, 1.5), a)
    assert _height(virtual_bbox2d(turned, ORIGIN)) == pytest.approx(_height(virtual_bbox2d(_car(30.0), ORIGIN)), rel=1e-9)
    # a box around the sensor has no finite projection: it passes every height test
    assert _height(virtual_bbox2d(Box3D("car", (0.5, 0.0, 0.85), (4.0, 1.8, 1.5), 0.0), ORIGIN)) == math.inf


def test_moderate_height_limit_falls_where_kitti_puts_it():
    # 25 px for a 1.5 m box: near face at f * 1.5 / 25 = 43.29 m
    limit = KITTI_FOCAL_PX * 1.5 / 25.0
    near = with_difficulty([_car(limit - 0.2 + 2.0)], np.zeros((0, 3)), ORIGIN)[0]
    far = with_difficulty([_car(limit + 0.2 + 2.0)], np.zeros((0, 3)), ORIGIN)[0]
    # no ray reaches either (empty scan): occlusion unknown, so give them a known state to test the height alone
    near, far = (Box3D(b.label, b.center, b.size, b.yaw, occlusion=0, extras=b.extras) for b in (near, far))
    assert kitti_difficulty(near) == "moderate" and kitti_difficulty(far) is None


def _face_scan(occluded_share: float, *, n_az: int = 40, n_el: int = 12, extra_ground: bool = True) -> np.ndarray:
    """Returns on the near face (x = 18) of ``_car(20)``, the rightmost ``occluded_share`` of the azimuth
    columns ending at 10 m instead (something in front), plus rays the score must not count: the road in
    front under the ground margin, a wall outside the box's window, and returns behind the box."""
    ys = np.linspace(-0.85, 0.85, n_az)
    zs = np.linspace(0.1 + GROUND_MARGIN_M + 0.05, 1.55, n_el)
    yy, zz = np.meshgrid(ys, zs)
    face = np.stack([np.full(yy.size, 18.0), yy.ravel(), zz.ravel()], 1)
    o = np.asarray(ORIGIN)
    blocked = face[:, 1] < ys[int(round(occluded_share * n_az))] if occluded_share > 0 else np.zeros(len(face), bool)
    pts = face.copy()
    pts[blocked] = o + (face[blocked] - o) * (10.0 / np.linalg.norm(face[blocked] - o, axis=1))[:, None]
    extra = [np.array([[30.0, 20.0, 1.0], [30.0, -20.0, 0.5]])]  # a wall at +-34 deg: outside the window
    extra.append(o + (np.array([[18.0, 0.3, 1.2]]) - o) * 1.8)  # through the glass: the return lies behind
    if extra_ground:  # rays that reach the box's lowest 0.2 m return from the road 3 m in front first
        low = np.stack([np.full(n_az, 18.0), ys, np.full(n_az, 0.1 + GROUND_MARGIN_M / 2)], 1)
        extra.append(o + (low - o) * (15.0 / np.linalg.norm(low - o, axis=1))[:, None])
    return np.concatenate([pts, *extra])


@pytest.mark.parametrize("share, state", [(0.0, 0), (0.5, 1), (0.75, 2)])
def test_occlusion_is_the_share_of_rays_stopped_in_front(share, state):
    pts = _face_scan(share)
    (frac, n), = occluded_fractions([_car(20.0)], pts, ORIGIN)
    expected = round(share * 40) / 40
    assert n == 40 * 12 + 1  # the face's rays and the one through the glass; the road and the wall left out
    assert frac == pytest.approx(expected * 40 * 12 / n, abs=1e-12)
    assert occlusion_state(frac) == state


def test_a_boxs_own_occlusion_state_wins_over_the_scan():
    """Boxes that arrive with a state (the generator's truth, >= 0) keep it; only boxes without (-1) are
    measured on the scan, and each says which it was."""
    pts = _face_scan(0.75)  # the scan says: largely occluded
    told = [replace(_car(20.0), occlusion=0), _car(20.0)]
    a, b = with_difficulty(told, pts, ORIGIN)
    assert (a.occlusion, a.extras["occlusion_source"]) == (0, "truth") and "occluded_fraction" not in a.extras
    assert (b.occlusion, b.extras["occlusion_source"]) == (2, "scan") and b.extras["occluded_fraction"] > 0.6
    assert kitti_difficulty(a) == "easy" and kitti_difficulty(b) == "hard"  # state 2: hard only
    assert a.extras["bbox2d"] == b.extras["bbox2d"] and a.truncation == b.truncation == 0.0
    # the generator's writer: the same ray test on its fault-free cast sets the state
    assert [t.occlusion for t in occlusion_truth([_car(20.0)] * 3, _face_scan(0.0), ORIGIN)] == [0, 0, 0]
    assert occlusion_truth([_car(20.0), _car(20.0, y=10.0)], pts, ORIGIN)[0].occlusion == 2
    assert occlusion_truth([_car(20.0, y=10.0)], pts, ORIGIN)[0].occlusion == 3  # no ray reaches it


def test_no_ray_through_the_box_is_unknown_occlusion_and_ignored_at_every_level():
    (frac, n), = occluded_fractions([_car(20.0, y=10.0)], _face_scan(0.0), ORIGIN)
    assert n == 0 and math.isnan(frac) and occlusion_state(frac) == 3
    b = with_difficulty([_car(20.0, y=10.0)], _face_scan(0.0), ORIGIN)[0]
    assert b.occlusion == 3 and kitti_difficulty(b) is None


def test_scorer_grades_generated_boxes_by_level_and_ignores_a_far_car():
    """A perfect detector on four near cars that misses one car beyond the moderate height limit: AP 1 at
    moderate (the far car is ignored), below 1 at level "all" (it is a miss there)."""
    rng = np.random.default_rng(0)
    near = [_car(20.0), _car(14.0, y=6.0, yaw=0.4), _car(25.0, y=-9.0, yaw=-0.2), _car(-18.0, y=3.0)]
    far = Box3D("car", (46.5, 12.0, 0.85), (4.0, 1.8, 1.5), 0.0)  # inside the 50 m gate, under 25 px
    inside = [np.asarray(b.center) + (rng.uniform(-0.4, 0.4, (30, 3)) * np.asarray(b.size)) @ np.array(
        [[math.cos(b.yaw), math.sin(b.yaw), 0.0], [-math.sin(b.yaw), math.cos(b.yaw), 0.0], [0.0, 0.0, 1.0]])
        for b in near[1:] + [far]]  # returns of their own, so the min-points filter keeps them
    pts = np.concatenate([_face_scan(0.0), *inside])
    det = [Box3D("car", b.center, b.size, b.yaw, score=0.9 - 0.1 * i) for i, b in enumerate(near)]
    plain, graded = DetectionScorer(), DetectionScorer()
    gt = with_difficulty(near + [far], pts, ORIGIN)
    assert [kitti_difficulty(b) for b in gt] == ["easy"] * 4 + [None]
    frames = 12  # R40 samples recall in 1/40 steps: enough ground truth that every step is reached
    for _ in range(frames):
        plain.add_frame(near + [far], det, points=pts)
        graded.add_frame(gt, with_virtual_bbox2d(det, ORIGIN), points=pts)
    r_all, r_lv = plain.results(), graded.results()
    assert r_all["kitti"]["levels"] == ["all"] and r_lv["kitti"]["levels"] == ["easy", "moderate", "hard"]
    mod = r_lv["kitti"]["per_class"]["car"]["moderate"]
    assert mod["n_gt"] == 4 * frames and mod["ap_r40_3d"] == pytest.approx(1.0)
    assert r_all["kitti"]["per_class"]["car"]["all"]["n_gt"] == 5 * frames
    # recall stops at 4 / 5: precision 1 up to recall 0.8, i.e. 32 of the 40 recall steps
    assert r_all["kitti"]["per_class"]["car"]["all"]["ap_r40_3d"] == pytest.approx(32 / 40)
    # a confident detection of nothing beyond the height limit is ignored at moderate, not a false positive
    graded2, plain2 = DetectionScorer(), DetectionScorer()
    ghost = Box3D("car", (47.0, -12.0, 0.85), (4.0, 1.8, 1.5), 0.0, score=0.95)
    for _ in range(frames):
        graded2.add_frame(gt, with_virtual_bbox2d(det + [ghost], ORIGIN), points=pts)
        plain2.add_frame(near + [far], det + [ghost], points=pts)
    assert graded2.results()["kitti"]["per_class"]["car"]["moderate"]["ap_r40_3d"] == pytest.approx(1.0)
    assert plain2.results()["kitti"]["per_class"]["car"]["all"]["fp_3d"] == frames


def _ray_march(origin: np.ndarray, dirs: np.ndarray, scene: list[Box3D], target: Box3D, step: float = 0.01,
               reach: float = 30.0) -> tuple[np.ndarray, int, int]:
    """Brute force, independent of the module's slab test: march each ray in ``step`` metres; the first
    sample inside any box is the return; the first inside ``target`` is its entry. Returns the return points
    and the counts (rays through the target above its ground margin, of them stopped > 0.3 m in front)."""
    ts = np.arange(step, reach, step)
    pts, through, stopped = [], 0, 0
    bottom = target.center[2] - target.size[2] / 2
    for d in dirs:
        samples = origin + ts[:, None] * d
        first = [np.flatnonzero(b.contains(samples)) for b in scene]
        hits = [f[0] for f in first if len(f)]
        if not hits:
            continue  # no return
        ret = ts[min(hits)]
        pts.append(origin + ret * d)
        inside = np.flatnonzero(target.contains(samples))
        if len(inside) and samples[inside[0], 2] >= bottom + GROUND_MARGIN_M:
            through += 1
            stopped += int(ret < ts[inside[0]] - 0.3)
    return np.array(pts), through, stopped


@pytest.mark.parametrize("case", ["close_side_on_behind_barrier", "tall_bus_behind_the_sensor_at_180_deg"])
def test_occlusion_agrees_with_a_brute_force_ray_march(case):
    """Close and tall boxes (whose extreme elevations lie mid-edge, not at a corner), a sensor away from the
    origin, and a box straight behind it (azimuth window across +-180 deg)."""
    origin = np.array([1.0, -0.5, 1.8])
    if case == "close_side_on_behind_barrier":  # beside the ego, 2.1 m away, behind a 1 m barrier
        target = Box3D("car", (1.0, 2.5, 0.85), (4.6, 1.8, 1.5), 0.05)
        scene = [target, Box3D("wall", (1.0, 1.2, 0.5), (8.0, 0.3, 1.0), 0.0)]
        az = np.radians(np.linspace(20.0, 160.0, 100))
        el = np.radians(np.linspace(-50.0, 0.0, 60))
    else:  # a bus crossing 5.75 m behind, taller than the sensor, a car crossing in front of it
        target = Box3D("car", (-6.0, -0.3, 1.6), (12.0, 2.5, 3.2), math.pi / 2 + 0.02)
        scene = [target, Box3D("car", (-2.5, -0.6, 0.8), (4.0, 1.8, 1.6), math.pi / 2)]
        az = np.radians(np.linspace(125.0, 235.0, 110))
        el = np.radians(np.linspace(-20.0, 20.0, 60))
    aa, ee = np.meshgrid(az, el)
    dirs = np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], -1).reshape(-1, 3)
    pts, through, stopped = _ray_march(origin, dirs, scene, target)
    (frac, n), = occluded_fractions([target], pts, origin)
    assert through > 300 and 0.02 < stopped / through < 0.98  # a case where both kinds of ray occur
    # the march places returns to within one step: rays grazing an edge or the ground margin may differ
    assert abs(n - through) <= 0.01 * through
    assert frac == pytest.approx(stopped / through, abs=0.01)


def test_a_box_around_the_sensor_tests_every_return():
    """No azimuth window exists (corners all around): every return is tested; rays leave the box from inside,
    so none is stopped in front of its entry (the sensor itself)."""
    hall = Box3D("car", (0.5, 0.0, 2.0), (20.0, 20.0, 5.0), 0.3)
    rng = np.random.default_rng(2)
    pts = rng.uniform(-15.0, 15.0, (500, 3)) * [1.0, 1.0, 0.1] + [0.0, 0.0, 1.0]
    (frac, n), = occluded_fractions([hall], pts, ORIGIN)
    assert n == 500 and frac == 0.0
    assert _height(virtual_bbox2d(hall, ORIGIN)) == math.inf
