"""Classical stereo (perception_nodes/pipeline/stereo*.py): depth arithmetic, SGBM on a known shift, the
rectified-pair checks, the inverse sensor model on a wall of known geometry, the health ratio under the
generator's camera faults, and depth quality on the real KITTI pair against its projected LiDAR scan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.codecs.camera_info import CameraModel
from perception_nodes.pipeline.occupancy import GridSpec
from perception_nodes.pipeline.stereo import (
    SgbmParams,
    StereoMatcher,
    StereoPairError,
    depth_from_disparity,
    depth_sigma,
    disparity_from_depth,
    points_from_depth,
    stereo_geometry,
    valid_disparity_ratio,
)
from perception_nodes.pipeline.stereo_occupancy import StereoEvidenceParams, stereo_evidence
from perception_nodes.scenario.camera import camera_rig
from tests.conftest import SHARED_DATA, require

EPS32 = float(np.finfo(np.float32).eps)
KITTI_PAIR = SHARED_DATA / "kitti_stereo_srcnn" / "demo"


def _model(P, width=320, height=96) -> CameraModel:
    P = np.asarray(P, dtype=np.float64).reshape(3, 4).copy()
    P[2, 3] = 0.0  # ROS CameraInfo has Tz = 0 (KITTI's P2/P3 carry a 2.7 mm offset that belongs to the extrinsic)
    return CameraModel(width=width, height=height, frame_id="cam", distortion_model="plumb_bob", K=P[:, :3],
                       D=np.zeros(5), R=np.eye(3), P=P)


def _pair(fx=200.0, cx=159.5, cy=47.5, baseline=0.5, right=None):
    """A rectified left/right pair of CameraModels; ``right`` overrides entries {(i, j): value} of the right P."""
    left = np.array([[fx, 0, cx, 0], [0, fx, cy, 0], [0, 0, 1, 0]], dtype=np.float64)
    r = left.copy()
    r[0, 3] = -fx * baseline
    for (i, j), v in (right or {}).items():
        r[i, j] = v
    return _model(left), _model(r)


# --- depth arithmetic -------------------------------------------------------------------------------

def test_baseline_depth_and_points_follow_the_rectified_projection():
    left, right = _pair(fx=200.0, baseline=0.5)
    g = stereo_geometry(left, right)
    assert g.baseline == pytest.approx(0.5, rel=1e-12) and g.fb == pytest.approx(100.0, rel=1e-12)
    d = np.array([[100.0, 50.0, 0.4, np.nan, 2.0]], dtype=np.float32)
    z = depth_from_disparity(d, g)  # fx B / d; below 0.5 px and NaN: no depth
    np.testing.assert_allclose(z[0, [0, 1, 4]], [1.0, 2.0, 50.0], rtol=4 * EPS32)
    assert np.isnan(z[0, 2]) and np.isnan(z[0, 3])
    np.testing.assert_allclose(disparity_from_depth(z, g)[0, [0, 1, 4]], d[0, [0, 1, 4]], rtol=8 * EPS32)
    assert np.isnan(disparity_from_depth(np.array([np.inf, 0.0, -1.0]), g)).all()
    # sigma_Z = Z^2 sigma_d / (fx B): 10 m, 0.5 px, fB 100 -> 0.5 m
    assert depth_sigma(10.0, g, 0.5) == pytest.approx(0.5, rel=1e-12)
    # every pixel's 3-D point projects back onto that pixel (x right, y down, z forward)
    depth = np.full((96, 320), 7.0, np.float32)
    depth[::7, ::5] = np.nan
    pts, rows, cols = points_from_depth(depth, g, stride=2)
    assert len(pts) == np.isfinite(depth[::2, ::2]).sum()
    np.testing.assert_allclose(g.fx * pts[:, 0] / pts[:, 2] + g.cx, cols, atol=64 * EPS32 * 320)
    np.testing.assert_allclose(g.fy * pts[:, 1] / pts[:, 2] + g.cy, rows, atol=64 * EPS32 * 96)


def test_principal_point_offset_is_taken_out_of_the_disparity():
    left, right = _pair(fx=200.0, baseline=0.5, right={(0, 2): 155.5})
    g = stereo_geometry(left, right)
    assert g.doffs == pytest.approx(4.0)
    z = depth_from_disparity(np.array([104.0], np.float32), g)  # measured = true (100) + doffs
    assert z[0] == pytest.approx(1.0, rel=4 * EPS32)


def test_generated_rig_and_kitti_calibration_give_their_documented_baselines():
    rig = camera_rig(320, 96)
    g = stereo_geometry(rig["left"].model(), rig["right"].model())
    assert g.baseline == pytest.approx(0.54, rel=1e-12) and g.doffs == 0.0
    from perception_nodes.pipeline.stereo_eval import read_kitti_calib

    cal = read_kitti_calib(require(KITTI_PAIR) / "calib.txt")
    left, right = _model(cal["P2"], 1242, 375), _model(cal["P3"], 1242, 375)
    assert stereo_geometry(left, right).baseline == pytest.approx((44.85728 + 339.5242) / 721.5377, rel=1e-9)


@pytest.mark.parametrize("case, fragment", [
    ({(0, 0): 202.0}, "differ in fx"),
    ({(1, 2): 52.5}, "differ in cy"),
    ({(0, 3): 0.0}, "zero or negative"),
    ({(0, 3): 100.0}, "zero or negative"),  # left and right swapped
    ({(1, 3): -200.0 * 0.1}, "not a horizontally rectified pair"),
])
def test_pairs_that_are_not_rectified_are_rejected_with_the_reason(case, fragment):
    left, right = _pair(right=case)
    with pytest.raises(StereoPairError, match=fragment):
        stereo_geometry(left, right)


def test_unequal_sizes_are_rejected():
    left, right = _pair()
    right = CameraModel(width=321, height=96, frame_id="cam", distortion_model="plumb_bob", K=right.K, D=right.D,
                        R=right.R, P=right.P)
    with pytest.raises(StereoPairError, match="sizes differ"):
        stereo_geometry(left, right)
    m = StereoMatcher()
    with pytest.raises(StereoPairError, match="sizes differ"):
        m.disparity(np.zeros((96, 320), np.uint8), np.zeros((96, 321), np.uint8))
    with pytest.raises(StereoPairError, match="8-bit"):
        m.disparity(np.zeros((96, 320), np.uint16), np.zeros((96, 320), np.uint16))


# --- SGBM -------------------------------------------------------------------------------------------

def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Band-limited random texture (a 3x3 box blur of noise, so SGBM's sub-pixel fit has slopes to fit)."""
    n = np.random.default_rng(seed).integers(0, 256, (h + 2, w + 2)).astype(np.float32)
    b = sum(n[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
    return np.clip((b - b.mean()) * 3.0 + 128.0, 0, 255).astype(np.uint8)


def test_sgbm_recovers_a_known_shift_and_the_health_ratio_sees_a_blank_pair():
    shift = 9
    left = _texture(96, 320)
    right = np.empty_like(left)
    right[:, :-shift] = left[:, shift:]  # a point at left column u sits at right column u - shift
    right[:, -shift:] = _texture(96, shift, seed=1)
    m = StereoMatcher(SgbmParams())
    d = m.disparity(left, right)
    nd = m.num_disparities(320)
    assert nd == 32  # 0.09 * 320 = 28.8 -> next multiple of 16
    inner = d[4:-4, nd + 4:-4]
    assert np.isfinite(inner).mean() > 0.95
    assert (np.abs(inner[np.isfinite(inner)] - shift) <= 0.5).mean() > 0.95
    assert valid_disparity_ratio(d, nd) > 0.9
    blank = np.zeros_like(left)  # both cameras blacked out: SGBM calls disparity 0 valid; no depth, no health
    assert valid_disparity_ratio(m.disparity(blank, blank), nd) == 0.0
    # colour input is matched on its grey level: same result as the grey image for a grey-coloured pair
    d3 = m.disparity(np.repeat(left[..., None], 3, axis=2), np.repeat(right[..., None], 3, axis=2))
    np.testing.assert_array_equal(np.isnan(d3), np.isnan(d))


# --- inverse sensor model on a wall of known geometry -----------------------------------------------

def wall_depth(cam, wall_x: float, height: float = 3.0) -> np.ndarray:
    """Depth image of flat ground (z = 0) and a wall x = wall_x (0 <= z <= height), as seen by ``cam``;
    NaN where a ray meets neither (sky)."""
    R = cam.base_from_optical()
    t = np.asarray(cam.position, dtype=np.float64)
    u, v = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], -1) @ R.T  # per unit depth
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(d[..., 2] < 0, -t[2] / d[..., 2], np.inf)
        tw = np.where(d[..., 0] > 0, (wall_x - t[0]) / d[..., 0], np.inf)
        zw = t[2] + tw * d[..., 2]
        tw = np.where((zw >= 0) & (zw <= height), tw, np.inf)
    z = np.minimum(tg, tw)
    return np.where(np.isfinite(z), z, np.nan).astype(np.float32)


def _wall_grid(width: int, height: int, wall_x: float, **params):
    cam = camera_rig(width, height)["left"]
    rig = camera_rig(width, height)
    g = stereo_geometry(rig["left"].model(), rig["right"].model())
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = cam.base_from_optical(), cam.position
    grid, stats = stereo_evidence(wall_depth(cam, wall_x), g, T, GridSpec(), StereoEvidenceParams(**params))
    return grid, stats, g, cam


def test_wall_occupied_at_its_distance_free_before_it_unknown_behind():
    wall_x = 12.1  # inside the cell column [12.0, 12.25)
    grid, stats, g, cam = _wall_grid(640, 192, wall_x)
    spec = grid.spec
    p = StereoEvidenceParams()
    assert stats.surface_rays > 0 and stats.obstacle_pixels > 0
    ys = np.arange(-1.0, 1.51, 0.25) + 0.125  # cells well inside the field of view at 12 m (half width ~ 10 m)
    row, col, _ = spec.cell_index(np.full_like(ys, wall_x), ys)
    occ, free = grid.occupied[row, col], grid.free[row, col]
    assert (occ > 0).all() and (grid.probability()[row, col] > 0.5).all()
    # free before the wall, up to the margin: max(half a cell diagonal, 2 sigma_Z(wall range))
    sigma = depth_sigma(wall_x - cam.position[0], g, p.disparity_sigma_px)
    margin = max(spec.resolution * math.sqrt(0.5), p.free_margin_sigmas * sigma)
    for x in np.arange(4.0, wall_x - margin - spec.resolution, 1.0) + 0.125:
        r, c, _ = spec.cell_index(np.full_like(ys, x), ys)
        assert (grid.free[r, c] > 0).all() and (grid.occupied[r, c] == 0).all(), x
        assert (grid.probability()[r, c] < 0.5).all()
    # unknown behind the wall and behind the camera: no evidence at all (vacuity exactly 1)
    for x in (wall_x + 1.0, wall_x + 10.0, -5.0):
        r, c, _ = spec.cell_index(np.full_like(ys, x), ys)
        assert (grid.occupied[r, c] == 0).all() and (grid.free[r, c] == 0).all(), x
        assert (grid.vacuity()[r, c] == 1.0).all()
    # nothing anywhere beyond the wall's cell column
    cols_x = spec.origin[0] + (np.arange(spec.width) + 0.5) * spec.resolution
    beyond = cols_x > wall_x + spec.resolution
    assert grid.occupied[:, beyond].sum() == 0 and grid.free[:, beyond].sum() == 0


def test_evidence_counts_rays_not_pixels():
    """The same wall seen by a 320 px and a 1280 px camera (16x the pixels) gives about the same evidence
    when the depth error model is switched off (sigma_d = 0, every hit weight 1): it is counted per ray
    of reference width, so resolution and pixel count do not set its scale."""
    small, *_ = _wall_grid(320, 96, 12.1, disparity_sigma_px=0.0, pixel_stride=1)
    large, *_ = _wall_grid(1280, 384, 12.1, disparity_sigma_px=0.0, pixel_stride=2)
    spec = small.spec
    ys = np.arange(-1.0, 1.51, 0.25) + 0.125
    for x, what in ((12.1, "occupied"), (6.125, "free")):
        r, c, _ = spec.cell_index(np.full_like(ys, x), ys)
        a, b = getattr(small, what)[r, c].sum(), getattr(large, what)[r, c].sum()
        assert a > 0 and b > 0
        # bins are whole columns: 1 vs 2 px per bin at the two widths, so cells see +-1 ray: 25 % apart at most
        assert 0.75 < a / b < 1.33, (what, a, b)


def test_far_hits_are_down_weighted_as_depth_error_grows_with_z_squared():
    near, *_ = _wall_grid(640, 192, 8.1)
    far, *_ = _wall_grid(640, 192, 24.1)
    spec = near.spec
    r8, c8, _ = spec.cell_index(np.array([8.1]), np.array([0.125]))
    r24, c24, _ = spec.cell_index(np.array([24.1]), np.array([0.125]))
    # per cell, 3x the range means 1/3 the rays (angular width) and, past the knee of w, 1/9 the weight
    assert far.occupied[r24, c24][0] < near.occupied[r8, c8][0] / 9.0
    beyond, *_ = _wall_grid(640, 192, 45.1)  # past max_depth_m: no hit evidence at all
    assert beyond.occupied.sum() == 0 and beyond.free.sum() > 0


# --- health under the generator's camera faults -----------------------------------------------------

def test_health_ratio_falls_under_camera_blackout_and_glare():
    from perception_nodes.scenario.camera import render_camera
    from perception_nodes.scenario.faults import Faults
    from perception_nodes.scenario.scenarios import make_scene

    scene = make_scene("urban_street", 0)
    rig = camera_rig(320, 96)
    left, right = render_camera(scene, 1.0, rig["left"], 1), render_camera(scene, 1.0, rig["right"], 2)
    m = StereoMatcher()
    nd = m.num_disparities(320)

    def ratio(faults: Faults) -> float:
        return valid_disparity_ratio(m.disparity(faults.apply_camera("left", left.rgb, 0.0),
                                                 faults.apply_camera("right", right.rgb, 0.0)), nd)

    clean = ratio(Faults())
    glare = ratio(Faults(glare_time=(0.0, 1.0)))
    one_dark = ratio(Faults(camera_blackout_time=(0.0, 1.0), camera_blackout_cameras=("left",)))
    both_dark = ratio(Faults(camera_blackout_time=(0.0, 1.0), camera_blackout_cameras=("left", "right")))
    assert clean > 0.7  # the node's WARN threshold is 0.5
    # glare saturates a disc of radius 0.06 W (plus bloom and a streak): at least that disc's share is lost
    assert glare < clean - math.pi * (0.06 * 320) ** 2 / (96 * (320 - nd))
    assert one_dark < 0.15 and both_dark == 0.0  # the node's ERROR threshold is 0.15


# --- the real KITTI pair ----------------------------------------------------------------------------

def test_kitti_pair_depth_against_projected_lidar():
    from perception_nodes.pipeline.stereo_eval import depth_metrics, load_kitti_pair, project_lidar_depth

    pair = load_kitti_pair(require(KITTI_PAIR))
    g = pair.geometry
    ref = project_lidar_depth(pair)
    n_ref = int(np.isfinite(ref).sum())
    assert 15_000 < n_ref < 18_000  # SOURCE.md: 17,784 points project into the image (a few share a pixel)
    z = depth_from_disparity(StereoMatcher().disparity(pair.left, pair.right), g)
    m = depth_metrics(z, ref, g)
    # Loose bounds: SGBM with a left-right check is documented at ~10 % KITTI outliers (> 3 px and > 5 %);
    # 0.8 leaves room for the LiDAR's own parallax artefacts. Coverage: the leftmost 112 columns (9 % of the
    # width) cannot match, occlusion bands and texture-less road lose more; 0.6 is far below what we see.
    assert m["within_3px_or_5pct"] > 0.8 and m["within_3px"] > 0.8
    assert m["abs_rel"] < 0.2 and 0.6 < m["coverage"] < 1.0
    # the rig: cam 2 sits 1.65 m above the ground (KITTI setup: 1.73 m LiDAR, camera 8 cm lower), looks
    # along base_link +x, with its x axis to the right (-y)
    T = pair.base_from_left()
    assert T[2, 3] == pytest.approx(1.65, abs=0.01) and T[0, 3] == pytest.approx(0.27, abs=0.02)
    assert T[:3, 2] @ [1.0, 0.0, 0.0] > 0.999 and T[:3, 0] @ [0.0, -1.0, 0.0] > 0.999
    # the trivial baseline: one constant depth (the stereo map's own median) everywhere
    const = depth_metrics(np.full(z.shape, np.nanmedian(z), np.float32), ref, g)
    assert const["coverage"] == 1.0 and const["within_3px_or_5pct"] < 0.4 and const["abs_rel"] > 2 * m["abs_rel"]

