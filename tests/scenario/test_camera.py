"""The camera simulator: rig calibration, exact depth, stereo geometry that block matching recovers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.scenario import (
    LIDAR_HEIGHT,
    BeamModel,
    Ground,
    Scene,
    actors_at,
    camera_rig,
    cast_scan,
    default_scene,
    disparity_from_depth,
    make_scene,
    render_camera,
)
from perception_nodes.scenario.camera import KITTI_FX, SKY, STEREO_BASELINE


@pytest.fixture(scope="module")
def rig():
    return camera_rig(320, 96)


@pytest.fixture(scope="module")
def pair(rig):
    scene = default_scene(0)
    boxes = actors_at(scene, 2.0)
    return (scene, render_camera(scene, 2.0, rig["left"], 0, boxes=boxes),
            render_camera(scene, 2.0, rig["right"], 1, boxes=boxes))


def test_rig_calibration_is_kitti_like(rig):
    left, right, mono = rig["left"], rig["right"], rig["mono"]
    assert left.fx == pytest.approx(KITTI_FX * 320 / 1242) and left.fy == left.fx
    assert (left.cx, left.cy) == (159.5, 47.5)
    np.testing.assert_array_equal(left.K, right.K)
    assert right.P[0, 3] == pytest.approx(-left.fx * STEREO_BASELINE) and left.P[0, 3] == 0.0
    assert right.baseline == pytest.approx(0.54)
    # optical frames: z forward, x right, y down in base_link; the right camera 0.54 m to the right
    m = left.transform().matrix
    np.testing.assert_allclose(m[:3, 2], (1, 0, 0), atol=1e-12)
    np.testing.assert_allclose(m[:3, 0], (0, -1, 0), atol=1e-12)
    np.testing.assert_allclose(m[:3, 1], (0, 0, -1), atol=1e-12)
    np.testing.assert_allclose(left.transform().translation, (0.27, 0.27, 1.65))
    np.testing.assert_allclose(right.transform().translation, (0.27, -0.27, 1.65))
    assert mono.fx == pytest.approx(160.0)  # 90 deg horizontal field of view
    model = right.model()
    assert model.frame_id == "camera_right_optical" and model.distortion_model == "plumb_bob"
    assert not model.D.any() and np.array_equal(model.R, np.eye(3))


def test_images_have_the_promised_layout_and_are_deterministic(rig, pair):
    scene, left, _ = pair
    assert left.rgb.shape == (96, 320, 3) and left.rgb.dtype == np.uint8
    assert left.depth.shape == (96, 320) and left.depth.dtype == np.float32
    again = render_camera(scene, 2.0, rig["left"], 0)
    assert np.array_equal(again.rgb, left.rgb) and np.array_equal(again.depth, left.depth)
    other_noise = render_camera(scene, 2.0, rig["left"], 5)
    assert not np.array_equal(other_noise.rgb, left.rgb) and np.array_equal(other_noise.depth, left.depth)
    clean = [render_camera(scene, 2.0, rig["left"], k, noise_std=0.0).rgb for k in (1, 2)]
    assert np.array_equal(*clean)
    # sky at the top (infinite depth), ground at the bottom, objects in between; textured surfaces
    sky = left.source == SKY
    assert sky[:5].mean() > 0.2 and not sky[-10:].any()
    assert np.all(np.isinf(left.depth[sky])) and np.all(np.isfinite(left.depth[~sky]))
    assert (left.source >= 0).mean() > 0.2
    road = left.source == -1
    assert left.rgb[road].std() > 3.0


def _brute_force_depth(scene: Scene, t: float, cam) -> np.ndarray:
    """Every pixel's ray against the flat ground and every box, no culling: z-depth in the optical frame."""
    from perception_nodes.scenario.camera import _rot_z
    from perception_nodes.scenario.scene import ego_pose3d

    ex, ey, ez, eyaw = ego_pose3d(t, scene)
    r_wo = _rot_z(eyaw) @ cam.base_from_optical()
    origin = np.array([ex, ey, ez]) + _rot_z(eyaw) @ np.asarray(cam.position)
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    d_o = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(u.shape)], -1)
    d = d_o @ r_wo.T
    best = np.where(d[..., 2] < 0, -origin[2] / np.minimum(d[..., 2], -1e-12), np.inf)
    for b in actors_at(scene, t):
        r = _rot_z(b.yaw)
        o = r.T @ (origin - np.asarray(b.center))
        dl = d @ r
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-np.asarray(b.size) / 2 - o) / dl
            t2 = (np.asarray(b.size) / 2 - o) / dl
        near = np.nanmax(np.minimum(t1, t2), axis=-1)
        far = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (near <= far) & (near > 0.05)
        best = np.where(hit & (near < best), near, best)
    return best


@pytest.mark.parametrize("name,t,cam_name", [("urban_street", 3.0, "left"), ("curved_road", 6.0, "mono"),
                                              ("highway", 4.0, "right")])
def test_depth_matches_brute_force_ray_casting(name, t, cam_name):
    """The windowed, occlusion-culled caster sees exactly what testing every pixel against every box sees."""
    base = make_scene(name, 0)
    scene = Scene(actors=base.actors, ground=Ground(curb_height=0.0, path=base.ground.path), ego=base.ego)
    cam = camera_rig(128, 40)[cam_name]
    got = render_camera(scene, t, cam, 0).depth
    ref = _brute_force_depth(scene, t, cam)
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-5)


def test_disparity_is_fx_b_over_depth(rig, pair):
    _, left, _ = pair
    disp = disparity_from_depth(left.depth, rig["left"].fx, rig["right"].baseline)
    fin = np.isfinite(left.depth)
    np.testing.assert_allclose(disp[fin] * left.depth[fin], rig["left"].fx * 0.54, rtol=1e-5)
    assert np.all(disp[~fin] == 0.0) and disp.dtype == np.float32


def _block_match_offsets(left, right, disp, *, n=500, half=3, search=6, seed=0, dy_range=(0,)):
    """For random textured patches on surfaces of constant disparity: the (dx, dy) offset, relative to
    the ground-truth match at (u - disparity, v), where the right image matches the left patch best."""
    gl = left.astype(np.float32).mean(axis=2)
    gr = right.astype(np.float32).mean(axis=2)
    h, w = gl.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = int(rng.integers(half + max(dy_range), h - half - max(dy_range) - 1))
        u = int(rng.integers(half + 50, w - half - 1))
        d = float(disp[v, u])
        if not 2.0 < d < 45.0 or np.ptp(disp[v - half:v + half + 1, u - half:u + half + 1]) > 0.5:
            continue
        patch = gl[v - half:v + half + 1, u - half:u + half + 1]
        if patch.std() < 2.0:
            continue
        best, arg = np.inf, None
        for dy in dy_range:
            for dx in range(-search, search + 1):
                x = int(round(u - d)) + dx
                if x - half < 0 or x + half >= w:
                    continue
                cost = np.abs(gr[v + dy - half:v + dy + half + 1, x - half:x + half + 1] - patch).sum()
                if cost < best:
                    best, arg = cost, (dx, dy)
        if arg is not None:
            out.append(arg)
    return np.array(out)


def test_textures_let_block_matching_find_the_true_disparity(rig, pair):
    """SAD block matching on the rendered pair lands on the ground-truth disparity (+-1 px, rounding)."""
    _, left, right = pair
    disp = disparity_from_depth(left.depth, rig["left"].fx, rig["right"].baseline)
    off = _block_match_offsets(left.rgb, right.rgb, disp)
    assert len(off) >= 40
    assert np.mean(np.abs(off[:, 0]) <= 1) >= 0.85


def test_lidar_and_camera_see_the_same_world(rig, pair):
    """LiDAR points moved into the left optical frame (through the rig transforms) land on pixels whose
    rendered depth is their depth: the two sensors agree on geometry and extrinsics."""
    scene, left, _ = pair
    scan = cast_scan(scene, 2.0, BeamModel.hdl64(), 0)
    cam = rig["left"]
    base_from_cam = cam.transform().matrix
    cam_from_base = np.linalg.inv(base_from_cam)
    p = scan.points[:, :3].astype(np.float64) + (0.0, 0.0, LIDAR_HEIGHT)
    pc = p @ cam_from_base[:3, :3].T + cam_from_base[:3, 3]
    pc = pc[pc[:, 2] > 2.0]
    u = np.round(cam.cx + cam.fx * pc[:, 0] / pc[:, 2]).astype(int)
    v = np.round(cam.cy + cam.fy * pc[:, 1] / pc[:, 2]).astype(int)
    inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    z, zi = pc[inside, 2], left.depth[v[inside], u[inside]]
    assert len(z) > 5000
    rel = np.abs(z - zi) / z
    assert np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.9


def test_misalignment_turns_the_view(rig):
    scene = default_scene(0)
    cam = rig["right"]
    a = math.radians(1.0)
    pitch = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ok = render_camera(scene, 1.0, cam, 0, noise_std=0.0)
    bad = render_camera(scene, 1.0, cam, 0, noise_std=0.0, misalignment=pitch)
    # turning the camera by +1 deg about its x axis tilts the view up (optical y points down), so the
    # image content moves down by about fy * tan(1 deg) rows: find the vertical shift that best maps the
    # clean inverse-depth image onto the tilted one
    shift = cam.fy * math.tan(a)
    inv_ok, inv_bad = 1.0 / ok.depth, 1.0 / bad.depth
    rows = slice(10, cam.height - 10)
    cost = {dy: np.mean(np.abs(inv_ok[10 + dy:cam.height - 10 + dy] - inv_bad[rows])) for dy in range(-8, 9)}
    best = min(cost, key=cost.get)
    assert abs(-best - shift) <= 1.0 and cost[best] < 0.5 * cost[0]
