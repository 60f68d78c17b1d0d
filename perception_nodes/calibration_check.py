"""Calibration that checks itself: does each camera's extrinsic still fit what its LiDAR and images show?

LiDAR-camera alignment (after Levinson & Thrun, "Automatic Online Calibration of Cameras and Lasers",
RSS 2013; our own implementation)
---------------------------------------------------------------------------------------------------
* **Depth edges of the scan** (:func:`lidar_depth_edges`): in the scan's range image (rows = rings,
  from the cloud's order, e.g. KITTI's ring after ring, or from clustering elevation angles; columns =
  the scan's azimuth step) a return whose neighbour - left/right in its ring or in the ring above/below -
  is farther by ``min_jump_m`` or more, and by ``smooth_ratio`` times the step to the opposite neighbour,
  is the foreground side of a depth discontinuity: an object's silhouette. Levinson & Thrun use ring
  neighbours only; those see vertical silhouettes, and a pitched camera went unnoticed on generated
  data, hence the ring-to-ring neighbours; the ratio keeps road and walls seen at a grazing angle (whose
  ranges grow steadily) out. Weight ``sqrt(min(jump, max_jump_m))``.
* **Image edges** (:func:`edge_response`): ``E`` = largest absolute grey difference to the 8 neighbours,
  scaled to [0, 1] by its 99th percentile; then an inverse distance transform spreads every edge over
  its neighbourhood, decaying by ``gamma = exp(-1 / decay_px)`` per pixel (Chebyshev distance):
  ``D = alpha * E + (1 - alpha) * max_x E(x) * gamma^d(x)``, ``alpha = 1/3``. A projected depth edge near
  an image edge scores high, and the score grows smoothly as it moves closer.
* **Score** ``J(T)``: weighted mean of ``D`` at the depth-edge points projected with extrinsic ``T``.
* **Statistic** ``F`` (:func:`check_camera`): ``J`` at the given extrinsic against ``J`` at the 728
  neighbours on a grid of rotations about the camera axes (``-s, 0, +s`` each, ``s = step_px / fx``) and
  translations along them (``-t, 0, +t``, ``t = step_px * ref_depth_m / fx``): ``F`` = fraction of
  neighbours that score lower. At a correct extrinsic ``J`` is a local maximum and ``F`` is near 1; a
  camera that moved has neighbours pointing back towards its true pose that score higher, and ``F``
  drops. ``F`` compares the extrinsic with itself on the same data, so it needs no absolute score
  threshold (image contrast and scene content change ``J`` a lot, ``F`` little).
* **Verdict**: OK when ``F >= ok_fraction``, WARN when ``F >= error_fraction``, else ERROR; also WARN
  ("unchecked") when there are too few depth edges in the image to judge (``min_edge_points``). The
  thresholds come from measurements on the real KITTI rig and generated data: docs/calibration.md.

Several frames can be pooled (:class:`AlignmentAccumulator`): the per-neighbour scores are summed over
frames before ``F`` is taken, which is what the monitor node does.

Stereo rectification (:func:`check_stereo`)
-------------------------------------------
ORB features in both images of a rectified pair, brute-force Hamming matching with Lowe's ratio test,
then the *vertical disparity* ``v_right - v_left`` of the matches (0 for a rectified pair) and the share
of matches with a negative horizontal disparity (impossible for points in front of a rectified pair).
Verdict from the median absolute vertical disparity in pixels (``stereo_ok_px``, ``stereo_error_px``).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from perception_nodes.errors import CalibrationError
from perception_nodes.rig import Rig

OK, WARN, ERROR = "OK", "WARN", "ERROR"
_LEVEL = {OK: 0, WARN: 1, ERROR: 2}


@dataclass(frozen=True)
class CheckParams:
    """Parameters of the check (defaults measured: docs/calibration.md)."""

    min_jump_m: float = 0.5  #: range step to a neighbouring return that makes a depth edge (m)
    max_jump_m: float = 10.0  #: larger steps weigh as this much
    smooth_ratio: float = 3.0  #: a jump must be this many times the step to the opposite neighbour
    min_depth_m: float = 1.5  #: depth-edge points nearer than this to the camera are ignored
    max_depth_m: float = 60.0  #: ... and farther than this
    step_deg: float = 0.5  #: perturbation step: rotations of this angle (step_px = fx * step in rad)
    ref_depth_m: float = 10.0  #: ... translations that move a point this far away by step_px
    decay_steps: float = 1.5  #: inverse distance transform: edge response falls by 1/e per decay_steps * step_px
    blur_sigma_px: float = 0.0  #: Gaussian blur of the grey image before edges (0: none)
    alpha: float = 1.0 / 3.0  #: weight of the edge itself against its spread neighbourhood
    min_edge_points: int = 40  #: fewer depth-edge points in the image: not enough to judge (WARN)
    ok_fraction: float = 0.9  #: F at or above: OK
    error_fraction: float = 0.7  #: F below: ERROR (between: WARN)
    orb_features: int = 2000  #: ORB keypoints per image (stereo check)
    ratio: float = 0.75  #: Lowe's ratio test
    min_matches: int = 20  #: fewer matches: stereo pair not judged (WARN)
    stereo_ok_px: float = 1.0  #: median |vertical disparity| (and |disparity bias|) at or below: OK
    stereo_error_px: float = 2.0  #: above: ERROR (between: WARN)
    bias_match_px: float = 1.5  #: a match takes the depth of a LiDAR point projected this close to it
    min_bias_matches: int = 10  #: fewer matches with LiDAR depth: no disparity-bias check

    def __post_init__(self) -> None:
        for name in ("min_jump_m", "max_jump_m", "step_deg", "ref_depth_m", "decay_steps", "ratio", "stereo_ok_px",
                     "stereo_error_px", "max_depth_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.error_fraction <= self.ok_fraction <= 1.0:
            raise ValueError(f"need 0 <= error_fraction <= ok_fraction <= 1, got {self.error_fraction}, "
                             f"{self.ok_fraction}")
        if self.stereo_error_px < self.stereo_ok_px:
            raise ValueError("stereo_error_px must be >= stereo_ok_px")
        if not 0.0 <= self.min_depth_m < self.max_depth_m:
            raise ValueError("need 0 <= min_depth_m < max_depth_m")


@dataclass(frozen=True)
class CameraCheck:
    """Result for one camera: ``score`` J at the given extrinsic, ``statistic`` F (fraction of perturbed
    extrinsics scoring lower), the verdict and why; ``best`` names the best-scoring perturbation."""

    camera: str
    score: float
    statistic: float
    verdict: str
    reason: str
    edge_points: int
    frames: int = 1
    best: str = ""
    best_gain: float = 0.0  #: (J(best) - J) / J


@dataclass(frozen=True)
class StereoCheck:
    """Rectification of a stereo pair: vertical disparity of matched features (pixels)."""

    left: str
    right: str
    matches: int
    median_dy_px: float
    median_abs_dy_px: float
    negative_disparity_fraction: float
    verdict: str
    reason: str
    disparity_bias_px: float = float("nan")  #: median (measured - LiDAR-predicted) horizontal disparity
    bias_matches: int = 0  #: matches the bias comes from


@dataclass
class RigCheckResult:
    """Per camera and per stereo pair; :meth:`worst` is the rig's overall verdict."""

    cameras: dict[str, CameraCheck] = field(default_factory=dict)
    stereo: list[StereoCheck] = field(default_factory=list)

    def worst(self) -> str:
        levels = [c.verdict for c in self.cameras.values()] + [s.verdict for s in self.stereo]
        return max(levels, key=_LEVEL.__getitem__, default=OK)

    def to_json(self) -> str:
        return json.dumps({"verdict": self.worst(),
                           "cameras": {k: asdict(v) for k, v in self.cameras.items()},
                           "stereo": [asdict(s) for s in self.stereo]}, sort_keys=True)


# ------------------------------------------------------------------------------------- LiDAR side
def assign_rings(points: np.ndarray) -> np.ndarray:
    """Ring index per return: from the scan order when the cloud is stored ring after ring (azimuth
    wraps 8-256 times, as in KITTI's .bin files, whole or cropped to a camera's view), else by clustering the elevation angles (a simulated or
    driver-ordered cloud whose beams have exact elevations), else 0.4 deg elevation bins."""
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    n = len(xyz)
    if n == 0:
        return np.zeros(0, np.int32)
    az = np.arctan2(xyz[:, 1], xyz[:, 0])
    # a ring starts where the azimuth jumps back by more than half the scan's azimuth span: the wrap
    # through -pi of a full 360 deg scan, or the restart at the left edge of a scan cropped to a camera's view
    span = float(az.max() - az.min())
    wraps = np.flatnonzero(np.diff(az) < -0.5 * span)
    if 8 <= len(wraps) <= 256 and n / (len(wraps) + 1) >= 50:
        ring = np.zeros(n, np.int32)
        ring[wraps + 1] = 1
        ring = np.cumsum(ring, dtype=np.int32)
        # a scan that starts mid-ring ends with the rest of that ring: one ring, if at the same elevation
        el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
        last = ring[-1]
        if abs(np.median(el[ring == 0]) - np.median(el[ring == last])) < math.radians(0.1):
            ring[ring == last] = 0
        return ring
    el = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    order = np.argsort(el, kind="stable")
    gaps = np.diff(el[order]) > 0.05
    if 8 <= int(gaps.sum()) + 1 <= 256:
        ring = np.empty(n, np.int32)
        ring[order] = np.concatenate([[0], np.cumsum(gaps)])
        return ring
    return np.floor((el - el.min()) / 0.4).astype(np.int32)


def range_image(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scan as a range image: rows = rings ordered by elevation (top first), columns = azimuth bins
    of the scan's own azimuth step. Returns ``(ranges (R, C) with inf where empty, index (R, C) of the
    point in each cell or -1, row and column of every point)``; of two returns in one cell the nearer wins.
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    ring = assign_rings(xyz)
    az = np.arctan2(xyz[:, 1], xyz[:, 0])
    el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
    rng = np.linalg.norm(xyz, axis=1)
    rings, inv = np.unique(ring, return_inverse=True)
    med_el = np.bincount(inv, weights=el) / np.maximum(np.bincount(inv), 1)  # mean elevation per ring
    row_of_ring = np.empty(len(rings), np.int64)
    row_of_ring[np.argsort(-med_el, kind="stable")] = np.arange(len(rings))
    row = row_of_ring[inv]
    # azimuth step: median gap between consecutive returns of a ring
    order = np.lexsort((az, row))
    da = np.diff(az[order])
    same = row[order][1:] == row[order][:-1]
    gaps = da[same & (da > 1e-6)]
    step = float(np.median(gaps)) if len(gaps) else math.radians(0.2)
    cols = max(8, int(round(2 * math.pi / max(step, 1e-4))))
    col = np.rint((az + math.pi) / (2 * math.pi) * cols).astype(np.int64) % cols
    ranges = np.full((len(rings), cols), np.inf)
    index = np.full((len(rings), cols), -1, np.int64)
    by_range = np.argsort(-rng, kind="stable")  # farthest first: the nearest written last wins
    ranges[row[by_range], col[by_range]] = rng[by_range]
    index[row[by_range], col[by_range]] = by_range
    return ranges, index, np.stack([row, col], axis=1)


def lidar_depth_edges(points: np.ndarray, params: CheckParams = CheckParams()) -> tuple[np.ndarray, np.ndarray]:
    """Foreground points of depth discontinuities (N, 3) in the LiDAR frame, and their weights (N,).

    A return is an edge point when a neighbour in the range image (left/right in its ring, or the same
    azimuth bin in the ring above/below) is farther by ``min_jump_m`` or more: ring neighbours find
    vertical silhouettes (a pole, a car's side), ring-to-ring neighbours horizontal ones (a car's roof,
    a wall's top). Empty neighbours (no return: sky, dropout) count as no edge.
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    if len(xyz) < 3:
        return np.zeros((0, 3)), np.zeros(0)
    ranges, index, _ = range_image(xyz)
    jump = np.zeros_like(ranges)
    finite = np.isfinite(ranges)
    left, right = np.roll(ranges, 1, axis=1), np.roll(ranges, -1, axis=1)
    up = np.full_like(ranges, np.inf)
    up[1:] = ranges[:-1]
    down = np.full_like(ranges, np.inf)
    down[:-1] = ranges[1:]

    def take(far: np.ndarray, other: np.ndarray) -> None:
        """Jumps to ``far`` that stand out from the step to the opposite neighbour ``other``: on a smooth
        surface seen at a grazing angle (the road far ahead, a wall along the street) consecutive ranges
        grow steadily and are no silhouette."""
        with np.errstate(invalid="ignore"):
            d = np.where(finite & np.isfinite(far), far - ranges, 0.0)
            trend = np.where(np.isfinite(other), np.abs(other - ranges), 0.0)
        d = np.where(d >= params.smooth_ratio * trend, d, 0.0)
        np.maximum(jump, d, out=jump)

    take(left, right)
    take(right, left)
    take(up, down)
    take(down, up)
    keep = finite & (jump >= params.min_jump_m)
    idx = index[keep]
    w = np.sqrt(np.minimum(jump[keep], params.max_jump_m))
    return xyz[idx], w


# ------------------------------------------------------------------------------------- image side
def to_gray(image: np.ndarray) -> np.ndarray:
    """float32 grey levels of an (H, W) or (H, W, 3|4) image (RGB order assumed; any dtype)."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif img.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    return np.ascontiguousarray(img, dtype=np.float32)


def step_px(fx: float, params: CheckParams) -> float:
    """The perturbation step in pixels for a camera of focal length ``fx``."""
    return fx * math.radians(params.step_deg)


def edge_response(image: np.ndarray, decay_px: float, params: CheckParams = CheckParams()) -> np.ndarray:
    """The inverse-distance-transformed edge map ``D`` (float32, [0, 1]) of an image (module doc)."""
    import cv2

    gray = to_gray(image)
    if params.blur_sigma_px > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), params.blur_sigma_px)
    kernel = np.ones((3, 3), np.uint8)
    e = np.maximum(cv2.dilate(gray, kernel) - gray, gray - cv2.erode(gray, kernel))
    scale = float(np.percentile(e, 99)) if e.size else 0.0
    e = np.clip(e / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(e)
    decay_px = max(float(decay_px), 0.5)
    gamma = math.exp(-1.0 / decay_px)
    spread = e.copy()
    for _ in range(int(math.ceil(4 * decay_px))):
        spread = np.maximum(spread, gamma * cv2.dilate(spread, kernel))
    return (params.alpha * e + (1.0 - params.alpha) * spread).astype(np.float32)


# ------------------------------------------------------------------------------------- alignment
def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def perturbation_grid(rot_step: float, trans_step: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rotations (N, 3, 3), translations (N, 3) and names of the 3^6 - 1 grid neighbours (camera frame)."""
    rots, trans, names = [], [], []
    for k in itertools.product((-1, 0, 1), repeat=6):
        if not any(k):
            continue
        r = _rot(0, k[0] * rot_step) @ _rot(1, k[1] * rot_step) @ _rot(2, k[2] * rot_step)
        rots.append(r)
        trans.append(np.array(k[3:], float) * trans_step)
        parts = [f"r{'xyz'[i]}{'+' if k[i] > 0 else '-'}" for i in range(3) if k[i]]
        parts += [f"t{'xyz'[i]}{'+' if k[3 + i] > 0 else '-'}" for i in range(3) if k[3 + i]]
        names.append(",".join(parts))
    return np.array(rots), np.array(trans), names


def alignment_scores(edges_lidar: np.ndarray, weights: np.ndarray, T_cam_lidar: np.ndarray,
                     intrinsics: np.ndarray, response: np.ndarray,
                     params: CheckParams = CheckParams()) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Weighted score sums of the given extrinsic (index 0) and its 728 grid neighbours, the weight sum
    they are divided by, the neighbours' names, and how many depth-edge points took part.

    Only points that project at least one perturbation's worth of pixels inside the image at the given
    extrinsic take part, so every candidate is scored on the same points.
    """
    h, w = response.shape
    K = np.asarray(intrinsics, dtype=np.float64)
    fx = float(K[0, 0])
    px = step_px(fx, params)
    rot_step = math.radians(params.step_deg)
    trans_step = rot_step * params.ref_depth_m
    rots, trans, names = perturbation_grid(rot_step, trans_step)
    pts = edges_lidar @ T_cam_lidar[:3, :3].T + T_cam_lidar[:3, 3]
    z = pts[:, 2]
    keep = (z >= params.min_depth_m) & (z <= params.max_depth_m)
    pts, wts = pts[keep], weights[keep]
    if len(pts):
        uv = pts @ K.T
        uv = uv[:, :2] / uv[:, 2:3]
        # the largest shift of a perturbation: a rotation step about two axes plus a translation step
        margin = 3.0 * px * (1.0 + max(w, h) / (2.0 * fx)) + 2.0
        inside = ((uv[:, 0] >= margin) & (uv[:, 0] <= w - 1 - margin)
                  & (uv[:, 1] >= margin) & (uv[:, 1] <= h - 1 - margin))
        pts, wts = pts[inside], wts[inside]
    n = len(pts)
    total = np.zeros(len(names) + 1)
    if n == 0:
        return total, np.float64(0.0), names, 0
    all_r = np.concatenate([np.eye(3)[None], rots]).astype(np.float32)
    all_t = np.concatenate([np.zeros((1, 3)), trans]).astype(np.float32)
    p32 = pts.astype(np.float32)
    k32 = K.astype(np.float32)
    chunk = max(1, 2_000_000 // max(n, 1))
    for s in range(0, len(all_r), chunk):
        q = np.matmul(all_r[s:s + chunk], p32.T) + all_t[s:s + chunk, :, None]  # (k, 3, n)
        zz = np.maximum(q[:, 2], 1e-3)
        u = (k32[0, 0] * q[:, 0] + k32[0, 1] * q[:, 1]) / zz + k32[0, 2]
        v = k32[1, 1] * q[:, 1] / zz + k32[1, 2]
        ui = np.clip(np.rint(u), 0, w - 1).astype(np.intp)
        vi = np.clip(np.rint(v), 0, h - 1).astype(np.intp)
        total[s:s + chunk] = response[vi, ui] @ wts.astype(np.float32)
    return total, np.float64(wts.sum()), names, n


@dataclass
class AlignmentAccumulator:
    """Pools the alignment scores of one camera over frames (sums per candidate extrinsic)."""

    camera: str
    params: CheckParams = field(default_factory=CheckParams)
    sums: np.ndarray | None = None
    weight: float = 0.0
    points: int = 0
    frames: int = 0
    names: list[str] = field(default_factory=list)

    def add(self, sums: np.ndarray, weight: float, names: list[str], points: int) -> None:
        self.sums = sums.copy() if self.sums is None else self.sums + sums
        self.weight += float(weight)
        self.points += int(points)
        self.frames += 1
        self.names = names

    def result(self) -> CameraCheck:
        return verdict_of(self.camera, self.sums, self.weight, self.names, self.points, self.frames, self.params)


def verdict_of(camera: str, sums: np.ndarray | None, weight: float, names: list[str], points: int, frames: int,
               params: CheckParams) -> CameraCheck:
    """The :class:`CameraCheck` of pooled scores (module doc: statistic and thresholds)."""
    if sums is None or points < params.min_edge_points or weight <= 0:
        return CameraCheck(camera, float("nan"), float("nan"), WARN,
                           f"unchecked: {points} LiDAR depth-edge points in the image over {frames} frame(s), "
                           f"{params.min_edge_points} needed", points, frames)
    j = sums / weight
    score, others = float(j[0]), j[1:]
    frac = float(np.mean(others < score))
    b = int(np.argmax(others))
    gain = float((others[b] - score) / score) if score > 0 else 0.0
    if frac >= params.ok_fraction:
        verdict, reason = OK, f"extrinsic is a local optimum of edge alignment: F={frac:.3f} >= {params.ok_fraction:g}"
    else:
        verdict = WARN if frac >= params.error_fraction else ERROR
        bound = params.error_fraction if verdict == ERROR else params.ok_fraction
        reason = (f"edge alignment improves when the camera is moved: F={frac:.3f} < {bound:g}; best neighbour "
                  f"{names[b]} scores {gain:+.1%} (step {params.step_deg:g} deg)")
    return CameraCheck(camera, score, frac, verdict, reason, points, frames, names[b], gain)


def check_camera(camera: str, points_lidar: np.ndarray, image: np.ndarray, T_cam_lidar: np.ndarray,
                 intrinsics: np.ndarray, params: CheckParams = CheckParams(),
                 edges: tuple[np.ndarray, np.ndarray] | None = None) -> CameraCheck:
    """Check one camera on one frame (``edges``: precomputed :func:`lidar_depth_edges` of the scan)."""
    e, w = edges if edges is not None else lidar_depth_edges(points_lidar, params)
    resp = edge_response(image, params.decay_steps * step_px(float(intrinsics[0][0]), params), params)
    sums, weight, names, n = alignment_scores(e, w, T_cam_lidar, intrinsics, resp, params)
    return verdict_of(camera, sums, float(weight), names, n, 1, params)


# ------------------------------------------------------------------------------------- stereo
def stereo_matches(left: np.ndarray, right: np.ndarray, params: CheckParams = CheckParams()) -> np.ndarray:
    """(M, 4) matched pixel pairs ``u_l, v_l, u_r, v_r`` (ORB + ratio test). Small images are upscaled to
    at least 480 px wide first (ORB's 31-px patches need room); pixels are in the original scale."""
    import cv2

    gl, gr = to_gray(left), to_gray(right)
    scale = max(1.0, 480.0 / max(gl.shape[1], 1))
    if scale > 1.0:
        size = (int(round(gl.shape[1] * scale)), int(round(gl.shape[0] * scale)))
        gl = cv2.resize(gl, size, interpolation=cv2.INTER_LINEAR)
        gr = cv2.resize(gr, size, interpolation=cv2.INTER_LINEAR)
    orb = cv2.ORB_create(nfeatures=params.orb_features)
    kl, dl = orb.detectAndCompute(np.clip(gl, 0, 255).astype(np.uint8), None)
    kr, dr = orb.detectAndCompute(np.clip(gr, 0, 255).astype(np.uint8), None)
    if dl is None or dr is None or len(kl) < 2 or len(kr) < 2:
        return np.zeros((0, 4))
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    out = []
    for pair in matcher.knnMatch(dl, dr, k=2):
        if len(pair) == 2 and pair[0].distance < params.ratio * pair[1].distance:
            a, b = kl[pair[0].queryIdx].pt, kr[pair[0].trainIdx].pt
            out.append((a[0], a[1], b[0], b[1]))
    if not out:
        return np.zeros((0, 4))
    return (np.array(out) + 0.5) / scale - 0.5


def check_stereo(left_name: str, right_name: str, left: np.ndarray, right: np.ndarray,
                 params: CheckParams = CheckParams(), *, lidar_left: np.ndarray | None = None,
                 fx_baseline: float | None = None) -> StereoCheck:
    """Rectification of a pair (module doc): vertical disparity of ORB matches; with ``lidar_left``
    ((N, 3) pixel u, v and depth z of LiDAR points projected into the left image) and ``fx_baseline``
    (fx * B, pixels x metres) also the horizontal disparity bias against the LiDAR's ``fx * B / z``, which
    a yawed camera shifts (vertical disparity does not see a yaw)."""
    m = stereo_matches(left, right, params)
    n = len(m)
    if n < params.min_matches:
        return StereoCheck(left_name, right_name, n, float("nan"), float("nan"), float("nan"), WARN,
                           f"unchecked: {n} ORB matches, {params.min_matches} needed")
    dy = m[:, 3] - m[:, 1]
    dx = m[:, 0] - m[:, 2]
    med, mad = float(np.median(dy)), float(np.median(np.abs(dy)))
    neg = float(np.mean(dx < -1.0))
    bias, nb = float("nan"), 0
    if lidar_left is not None and fx_baseline is not None and len(lidar_left):
        import cv2

        h, w = to_gray(left).shape
        depth = np.full((h, w), np.inf, np.float32)
        ui = np.clip(np.rint(lidar_left[:, 0]), 0, w - 1).astype(np.intp)
        vi = np.clip(np.rint(lidar_left[:, 1]), 0, h - 1).astype(np.intp)
        np.minimum.at(depth, (vi, ui), lidar_left[:, 2].astype(np.float32))
        r = max(0, int(round(params.bias_match_px)))
        if r:  # nearest return within r pixels (the foreground one, where a feature usually sits)
            depth = cv2.erode(depth, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
        mu = np.clip(np.rint(m[:, 0]), 0, w - 1).astype(np.intp)
        mv = np.clip(np.rint(m[:, 1]), 0, h - 1).astype(np.intp)
        z = depth[mv, mu]
        ok = np.isfinite(z)
        if ok.sum() >= params.min_bias_matches:
            resid = dx[ok] - fx_baseline / z[ok]
            bias, nb = float(np.median(resid)), int(ok.sum())
    worst = mad if not np.isfinite(bias) else max(mad, abs(bias))
    detail = f"median |dy| {mad:.2f} px" + (f", disparity bias {bias:+.2f} px vs LiDAR ({nb} matches)"
                                             if np.isfinite(bias) else "")
    if worst <= params.stereo_ok_px:
        verdict, reason = OK, f"rectified: {detail} <= {params.stereo_ok_px:g} px over {n} matches"
    else:
        verdict = WARN if worst <= params.stereo_error_px else ERROR
        bound = params.stereo_ok_px if verdict == WARN else params.stereo_error_px
        what = "rows not aligned" if mad >= abs(bias if np.isfinite(bias) else 0.0) else "disparity biased (yaw)"
        reason = f"{what}: {detail} > {bound:g} px over {n} matches"
    return StereoCheck(left_name, right_name, n, med, mad, neg, verdict, reason, bias, nb)


def project_lidar(points_lidar: np.ndarray, T_cam_lidar: np.ndarray, intrinsics: np.ndarray, width: int,
                  height: int, min_depth_m: float = 1.0) -> np.ndarray:
    """(N, 3) pixel u, v and depth z of the LiDAR points in front of a camera and inside its image."""
    xyz = np.asarray(points_lidar, dtype=np.float64)[:, :3]
    q = xyz @ T_cam_lidar[:3, :3].T + T_cam_lidar[:3, 3]
    q = q[q[:, 2] > min_depth_m]
    uv = q @ np.asarray(intrinsics, dtype=np.float64).T
    uv = uv[:, :2] / uv[:, 2:3]
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= height - 1)
    return np.column_stack([uv[inside], q[inside, 2]])


# ------------------------------------------------------------------------------------- rig
def check_rig(rig: Rig, points_lidar: np.ndarray, images: dict[str, np.ndarray], *, lidar: str | None = None,
              params: CheckParams = CheckParams(), stereo: bool = True) -> RigCheckResult:
    """Check every camera of ``rig`` that has an image in ``images`` against one LiDAR scan (points in
    that LiDAR's frame), and every stereo pair of the rig with both images."""
    if not images:
        raise CalibrationError("no camera images to check")
    edges = lidar_depth_edges(points_lidar, params)
    out = RigCheckResult()
    for name, img in images.items():
        cam = rig.cameras.get(name)
        if cam is None:
            raise CalibrationError(f"image for camera {name!r}, which the rig does not have "
                                   f"(cameras: {', '.join(rig.cameras)})")
        h, w = np.asarray(img).shape[:2]
        if (w, h) != (cam.model.width, cam.model.height):
            raise CalibrationError(f"camera {name!r}: image is {w}x{h}, calibration says "
                                   f"{cam.model.width}x{cam.model.height}")
        out.cameras[name] = check_camera(name, points_lidar, img, rig.T_camera_lidar(name, lidar),
                                         cam.intrinsics, params, edges)
    if stereo:
        for left, right in rig.stereo_pairs():
            if left in images and right in images:
                cam = rig.cameras[left]
                lid = project_lidar(points_lidar, rig.T_camera_lidar(left, lidar), cam.intrinsics,
                                    cam.model.width, cam.model.height)
                out.stereo.append(check_stereo(left, right, images[left], images[right], params, lidar_left=lid,
                                               fx_baseline=-rig.cameras[right].baseline_tx))
    return out


def perturbed(T_base_camera: np.ndarray, *, roll_deg: float = 0.0, pitch_deg: float = 0.0, yaw_deg: float = 0.0,
              axis_deg: tuple[float, float, float] | None = None) -> np.ndarray:
    """A camera pose rotated about its own optical axes (x, y, z) by ``axis_deg`` (degrees): what a
    knocked camera looks like, for tests and the docs' measurements."""
    ax = axis_deg if axis_deg is not None else (pitch_deg, yaw_deg, roll_deg)
    r = _rot(0, math.radians(ax[0])) @ _rot(1, math.radians(ax[1])) @ _rot(2, math.radians(ax[2]))
    out = np.array(T_base_camera, dtype=np.float64, copy=True)
    out[:3, :3] = out[:3, :3] @ r
    return out


def as_dict(result: RigCheckResult) -> dict[str, Any]:
    return json.loads(result.to_json())
