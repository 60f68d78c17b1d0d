"""Classical stereo on a rectified pair: OpenCV semi-global matching -> disparity -> depth -> 3-D points.

Numpy in, numpy out; no messages (the node, :mod:`perception_nodes.graph.stereo_occupancy`, decodes them).

Geometry of a rectified pair (ROS ``CameraInfo`` convention, REP 104): both images share the intrinsic
block of ``P`` (fx, fy, cx, cy), rows are aligned, and the right camera's ``P[0, 3] = -fx * B`` (the left
one's is 0), so the baseline is ``B = (P_left[0, 3] - P_right[0, 3]) / fx`` (the KITTI file's P2/P3 give the
same formula). A point at depth ``Z`` (metres along the optical axis) appears ``d = fx * B / Z`` pixels
further left in the right image; when the principal points differ by ``doffs = cx_left - cx_right`` (a
rectification without CALIB_ZERO_DISPARITY) the measured disparity is ``d + doffs``. So
``Z = fx * B / (d - doffs)`` and, in the left optical frame (x right, y down, z forward),
``X = (u - cx) Z / fx``, ``Y = (v - cy) Z / fy``.

Depth error grows with the square of depth: ``dZ/dd = -Z^2 / (fx B)``, so a matching error of
``sigma_d`` pixels gives ``sigma_Z = Z^2 sigma_d / (fx B)`` (KITTI, fx B = 384 px m: 0.13 m at 10 m,
1.2 m at 30 m for sigma_d = 0.5 px). :func:`depth_sigma` is that formula; the occupancy evidence uses it.

Matching: ``cv2.StereoSGBM`` with its parameters as data (:class:`SgbmParams`). The disparity search range
scales with the image width when ``num_disparities`` is 0: ``max_disparity_fraction * width`` rounded up to
a multiple of 16 (0.09 -> 112 at KITTI's 1242 px, 32 at the 320 px demo camera), i.e. the nearest depth
that can be matched, ``fx B / num_disparities``, stays about 3.2 m at any resolution of the same rig.

Health: :func:`valid_disparity_ratio` is the share of pixels with a valid disparity that gives a depth
(>= 0.5 px) among those that can have one (the leftmost ``num_disparities`` columns of the left image
have no partner in the right image and are left out). A blacked-out, glared or decalibrated camera
drives it down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SGBM_MODES",
    "SgbmParams",
    "StereoGeometry",
    "StereoMatcher",
    "StereoPairError",
    "depth_from_disparity",
    "depth_sigma",
    "disparity_from_depth",
    "points_from_depth",
    "stereo_geometry",
    "valid_disparity_ratio",
]

#: ``mode`` parameter -> OpenCV constant name (resolved lazily: cv2 is imported only when matching)
SGBM_MODES = {"sgbm": "STEREO_SGBM_MODE_SGBM", "hh": "STEREO_SGBM_MODE_HH",
              "sgbm_3way": "STEREO_SGBM_MODE_SGBM_3WAY", "hh4": "STEREO_SGBM_MODE_HH4"}


class StereoPairError(ValueError):
    """The two images or calibrations cannot be matched as a rectified pair (the reason says why)."""


@dataclass(frozen=True)
class SgbmParams:
    """``cv2.StereoSGBM`` settings (OpenCV's names; see its documentation for the cost model)."""

    #: Disparity search range (px, multiple of 16); 0 = ``max_disparity_fraction * width`` rounded up to 16.
    num_disparities: int = 0
    #: Search range as a share of the image width when ``num_disparities`` is 0.
    max_disparity_fraction: float = 0.09
    #: Smallest disparity searched (px).
    min_disparity: int = 0
    #: Matched block size (odd, px); 3..7 suits road scenes.
    block_size: int = 5
    #: Smoothness penalty for disparity changes of 1 px; 0 = 8 * channels * block_size^2 (OpenCV's advice).
    p1: int = 0
    #: Penalty for larger disparity jumps (> p1); 0 = 32 * channels * block_size^2.
    p2: int = 0
    #: Best cost must beat the second best by this many percent, else the pixel is invalid.
    uniqueness_ratio: int = 10
    #: Connected disparity blobs smaller than this (px) are invalidated as speckles; 0 disables.
    speckle_window_size: int = 100
    #: Disparity variation (px) allowed inside one connected blob of the speckle filter.
    speckle_range: int = 2
    #: Left-right consistency check tolerance (px); negative disables it.
    disp12_max_diff: int = 1
    #: Clip of the x-derivative prefilter.
    pre_filter_cap: int = 63
    #: sgbm (5 directions), sgbm_3way (3 directions, fastest, OpenCV's parallel version), hh (8
    #: directions, full-image memory), hh4.
    mode: str = "sgbm_3way"

    def __post_init__(self) -> None:
        if self.num_disparities < 0 or self.num_disparities % 16:
            raise ValueError("num_disparities must be 0 (auto) or a positive multiple of 16")
        if not 0.0 < self.max_disparity_fraction <= 1.0:
            raise ValueError("max_disparity_fraction must lie in (0, 1]")
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError("block_size must be odd and >= 1")
        if self.p1 < 0 or self.p2 < 0 or (self.p2 and self.p2 <= self.p1):
            raise ValueError("p1, p2 must be >= 0 and p2 > p1 when both are set")
        if self.mode not in SGBM_MODES:
            raise ValueError(f"mode must be one of {', '.join(SGBM_MODES)}, got {self.mode!r}")

    def disparities_for(self, width: int) -> int:
        """The search range used at ``width`` pixels (see ``num_disparities``)."""
        if self.num_disparities:
            return self.num_disparities
        return max(16, int(math.ceil(self.max_disparity_fraction * width / 16.0)) * 16)


@dataclass(frozen=True)
class StereoGeometry:
    """What depth needs from a rectified pair: shared intrinsics, baseline (m), principal-point offset."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    #: cx_left - cx_right (px): subtracted from measured disparities
    doffs: float = 0.0

    @property
    def fb(self) -> float:
        """fx * B (px m): depth = fb / disparity."""
        return self.fx * self.baseline


def stereo_geometry(left: Any, right: Any, *, intrinsics_tol: float = 1e-3, max_vertical_offset: float = 0.02) -> StereoGeometry:
    """Validate two rectified calibrations (``CameraModel`` or anything with width, height, P) as a pair.

    Raises :class:`StereoPairError` when the sizes differ, the intrinsic blocks of ``P`` differ (focal
    lengths or cy by more than ``intrinsics_tol`` relative, i.e. not rectified to a common camera; cx may
    differ, see ``doffs``), the baseline is zero, negative (cameras swapped) or not finite, or the right
    camera is offset vertically or in depth by more than ``max_vertical_offset`` times the baseline
    (not a horizontally rectified pair).
    """
    pl = np.asarray(left.P, dtype=np.float64).reshape(3, 4)
    pr = np.asarray(right.P, dtype=np.float64).reshape(3, 4)
    if (int(left.width), int(left.height)) != (int(right.width), int(right.height)):
        raise StereoPairError(f"camera_info sizes differ: left {left.width}x{left.height}, right {right.width}x{right.height}")
    if not (np.isfinite(pl).all() and np.isfinite(pr).all()):
        raise StereoPairError("camera_info P has non-finite values")
    fx, fy, cx, cy = pl[0, 0], pl[1, 1], pl[0, 2], pl[1, 2]
    if not (fx > 0 and fy > 0):
        raise StereoPairError(f"left P has a non-positive focal length (fx {fx:g}, fy {fy:g})")
    # focal lengths relative, cy in pixels scaled by fy (0.7 px at KITTI for the default 1e-3)
    for name, a, b in (("fx", fx, pr[0, 0]), ("fy", fy, pr[1, 1]), ("cy", cy, pr[1, 2])):
        if not abs(a - b) <= intrinsics_tol * (fy if name == "cy" else abs(a)):
            raise StereoPairError(f"left and right P differ in {name} ({a:g} vs {b:g}): not a rectified pair "
                                  "(image_rect of both cameras must share the intrinsics of P)")
    if abs(pl[0, 1]) > 1e-9 or abs(pr[0, 1]) > 1e-9 or pl[2, 2] != 1.0 or pr[2, 2] != 1.0:
        raise StereoPairError("P is not a pinhole projection of a rectified image (skew or P[2,2] != 1)")
    baseline = (pl[0, 3] - pr[0, 3]) / fx
    if not math.isfinite(baseline) or baseline <= 0.0:
        raise StereoPairError(f"baseline (P_left[0,3] - P_right[0,3]) / fx = {baseline:g} m: zero or negative "
                              "(right camera_info P[0,3] must be -fx * B; are left and right swapped?)")
    off_y = abs(pl[1, 3] - pr[1, 3]) / fy
    off_z = abs(pl[2, 3] - pr[2, 3])
    if max(off_y, off_z) > max_vertical_offset * baseline:
        raise StereoPairError(f"right camera offset {off_y:.3g} m vertically, {off_z:.3g} m in depth for a "
                              f"{baseline:.3g} m baseline: not a horizontally rectified pair")
    return StereoGeometry(int(left.width), int(left.height), float(fx), float(fy), float(cx), float(cy),
                          float(baseline), float(cx - pr[0, 2]))


class StereoMatcher:
    """``cv2.StereoSGBM`` configured from :class:`SgbmParams`, one matcher kept per image width/channels."""

    def __init__(self, params: SgbmParams | None = None) -> None:
        self.params = params or SgbmParams()
        self._cache: dict[tuple[int, int], Any] = {}

    def num_disparities(self, width: int) -> int:
        return self.params.disparities_for(width)

    def _matcher(self, width: int, channels: int) -> Any:
        key = (width, channels)
        m = self._cache.get(key)
        if m is None:
            import cv2

            p = self.params
            area = channels * p.block_size * p.block_size
            m = cv2.StereoSGBM_create(
                minDisparity=p.min_disparity, numDisparities=p.disparities_for(width), blockSize=p.block_size,
                P1=p.p1 or 8 * area, P2=p.p2 or 32 * area, disp12MaxDiff=p.disp12_max_diff,
                preFilterCap=p.pre_filter_cap, uniquenessRatio=p.uniqueness_ratio,
                speckleWindowSize=p.speckle_window_size, speckleRange=p.speckle_range,
                mode=getattr(cv2, SGBM_MODES[p.mode]))
            self._cache[key] = m
        return m

    def disparity(self, left: np.ndarray, right: np.ndarray) -> NDArray[np.float32]:
        """Disparity (px, float32) of the left image; NaN where SGBM found no valid match.

        ``left``/``right``: rectified (H, W) grey or (H, W, 3) colour uint8 images of the same size (colour
        is matched on its grey level: one channel is 3x cheaper and barely less accurate). Read-only and
        strided views are accepted (OpenCV copies what it must).
        """
        left, right = np.asarray(left), np.asarray(right)
        if left.shape != right.shape:
            raise StereoPairError(f"image sizes differ: left {left.shape}, right {right.shape}")
        if left.dtype != np.uint8 or right.dtype != np.uint8:
            raise StereoPairError(f"SGBM needs 8-bit images, got {left.dtype} and {right.dtype}")
        if left.ndim == 3:
            left, right = _grey(left), _grey(right)
        if left.ndim != 2 or min(left.shape) < 1:
            raise StereoPairError(f"images must be (H, W) or (H, W, 3), got {left.shape}")
        h, w = left.shape
        if w <= self.num_disparities(w) + self.params.block_size:
            raise StereoPairError(f"image width {w} is too small for {self.num_disparities(w)} disparities")
        raw = self._matcher(w, 1).compute(np.ascontiguousarray(left), np.ascontiguousarray(right))
        d = raw.astype(np.float32)
        d *= np.float32(1.0 / 16.0)  # SGBM returns fixed point with 4 fractional bits
        d[raw < (self.params.min_disparity * 16)] = np.nan  # invalid: (min_disparity - 1) * 16
        return d


def _grey(img: np.ndarray) -> np.ndarray:
    """Grey level of an (H, W, 3|4) uint8 image: the channel mean (symmetric in R and B, so rgb8 and bgr8
    give the same result and need no order flag), computed in uint16 without a float image."""
    c = img[..., :3].astype(np.uint16)
    return ((c[..., 0] + c[..., 1] + c[..., 2] + 1) // 3).astype(np.uint8)


def depth_from_disparity(disparity: np.ndarray, geom: StereoGeometry, *, min_disparity: float = 0.5) -> NDArray[np.float32]:
    """Depth (m along the optical axis, float32) = ``fx B / (d - doffs)``; NaN where the disparity is
    invalid (NaN) or below ``min_disparity`` px after the offset (farther than ``fx B / min_disparity``:
    a disparity that small is mostly matching noise, and 0 would be infinitely far)."""
    d = np.asarray(disparity, dtype=np.float32) - np.float32(geom.doffs)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.float32(geom.fb) / d
    z[~(d >= min_disparity)] = np.nan
    return z


def disparity_from_depth(depth: np.ndarray, geom: StereoGeometry) -> NDArray[np.float32]:
    """Inverse of :func:`depth_from_disparity`: ``fx B / Z + doffs``; NaN where the depth is not a finite
    positive number (sky in the generator's ground truth is +inf: disparity 0 there is not a match)."""
    z = np.asarray(depth, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.float32(geom.fb) / z + np.float32(geom.doffs)
    d[~(np.isfinite(z) & (z > 0))] = np.nan
    return d


def depth_sigma(depth: np.ndarray | float, geom: StereoGeometry, disparity_sigma_px: float) -> np.ndarray | float:
    """Standard deviation of stereo depth (m): ``Z^2 sigma_d / (fx B)`` (first-order error propagation)."""
    return np.square(depth) * (disparity_sigma_px / geom.fb)


def points_from_depth(depth: np.ndarray, geom: StereoGeometry, *, stride: int = 1) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """3-D points (N, 3) float32 in the left optical frame (x right, y down, z forward) of the pixels
    with a finite positive depth, and their (row, col); every ``stride``-th row and column only."""
    z = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    rows, cols = np.nonzero(np.isfinite(z) & (z > 0))
    zz = z[rows, cols]
    rows = rows.astype(np.int64) * stride
    cols = cols.astype(np.int64) * stride
    pts = np.empty((zz.size, 3), dtype=np.float32)
    pts[:, 0] = (cols.astype(np.float32) - np.float32(geom.cx)) * zz * np.float32(1.0 / geom.fx)
    pts[:, 1] = (rows.astype(np.float32) - np.float32(geom.cy)) * zz * np.float32(1.0 / geom.fy)
    pts[:, 2] = zz
    return pts, rows, cols


def valid_disparity_ratio(disparity: np.ndarray, num_disparities: int, min_disparity: float = 0.5) -> float:
    """Share of matchable pixels (all but the leftmost ``num_disparities`` columns, which have no partner
    in the right image) that got a valid disparity of at least ``min_disparity`` px, i.e. one that gives a
    depth: the node's health signal. 0 for an empty image.

    Why the lower bound: SGBM "matches" two uniform images (both cameras blacked out) at disparity 0
    everywhere and calls that valid; a zero disparity carries no depth (infinitely far), so it must not
    count as health. Real sky also sits near 0 and is left out alike (a road scene is mostly not sky)."""
    d = np.asarray(disparity)[:, num_disparities:]
    if d.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        return float(np.count_nonzero(d >= min_disparity)) / float(d.size)
