"""Scoring stereo depth against reference depth: projected LiDAR (real KITTI pair) or rendered ground truth.

Metrics, over the pixels where both the estimate and the reference have a depth (``both``):

* ``abs_rel``: mean of ``|Z_est - Z_ref| / Z_ref`` (the usual depth-benchmark error);
* ``within_3px``: share with ``|d_est - d_ref| <= 3`` px, disparities ``d = fx B / Z`` (KITTI stereo's
  3-px criterion, in the image's own pixels);
* ``within_5pct``: share with ``|Z_est - Z_ref| <= 0.05 Z_ref``;
* ``within_3px_or_5pct``: KITTI 2015's inlier rule (an outlier errs by more than 3 px *and* 5 %);
* ``coverage``: share of the reference pixels that got an estimate at all (an estimator that answers
  only where it is sure scores well on the rest; this says how much it left out).

The reference of the real KITTI pair is the LiDAR scan projected into the left image with the pair's own
calibration (``P2 R0_rect Tr_velo_to_cam``): sparse (about 4 % of the pixels), with the usual artefacts of
a sensor 0.27 m behind and 0.08 m beside the camera (a few points seen by the LiDAR but occluded for
the camera, mostly at object edges). Where several points fall into one pixel the nearest is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes.pipeline.stereo import StereoGeometry

__all__ = ["KittiPair", "depth_metrics", "load_kitti_pair", "project_lidar_depth"]


@dataclass(frozen=True)
class KittiPair:
    """A KITTI rectified colour pair (cam 2 = left, cam 3 = right) with its scan and calibration."""

    left: np.ndarray  # (H, W, 3) uint8 RGB
    right: np.ndarray
    points: np.ndarray  # (N, 4) float32 Velodyne x, y, z, reflectance
    P2: np.ndarray
    P3: np.ndarray
    R0: np.ndarray
    Tr: np.ndarray  # (3, 4) velo -> cam0

    @property
    def geometry(self) -> StereoGeometry:
        h, w = self.left.shape[:2]
        return _geometry(self.P2, self.P3, w, h)

    def velo_to_left(self) -> np.ndarray:
        """4x4 from the Velodyne frame into the left (cam 2) optical frame: ``R0_rect Tr_velo_to_cam``,
        then cam 0 -> cam 2 (``K^-1 P2[:, 3]``, the offset the projection matrix carries)."""
        T = np.eye(4)
        T[:3, :3] = self.R0 @ self.Tr[:, :3]
        T[:3, 3] = self.R0 @ self.Tr[:, 3] + np.linalg.solve(self.P2[:, :3], self.P2[:, 3])
        return T

    def base_from_left(self, lidar_height: float = 1.73) -> np.ndarray:
        """4x4 from the left optical frame into base_link (the ground point below the Velodyne, axes
        parallel to it: ``calibration/kitti_hdl64.yaml``)."""
        T = np.eye(4)
        T[2, 3] = lidar_height
        return T @ np.linalg.inv(self.velo_to_left())


class _Cam:
    def __init__(self, P: np.ndarray, w: int, h: int) -> None:
        self.P, self.width, self.height = P, w, h


def _geometry(P2: np.ndarray, P3: np.ndarray, w: int, h: int) -> StereoGeometry:
    from perception_nodes.pipeline.stereo import stereo_geometry

    return stereo_geometry(_Cam(P2, w, h), _Cam(P3, w, h))


def read_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    """``name: values`` lines of a KITTI calib file as float64 arrays (P0..P3 3x4, R0_rect 3x3, Tr_* 3x4)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if ":" not in line:
            continue
        key, vals = line.split(":", 1)
        arr = np.array([float(v) for v in vals.split()], dtype=np.float64)
        out[key.strip()] = arr.reshape(3, 3) if arr.size == 9 else arr.reshape(3, 4) if arr.size == 12 else arr
    return out


def load_kitti_pair(folder: str | Path) -> KittiPair:
    """``left.png``, ``right.png``, ``lidar.bin``, ``calib.txt`` of a folder (the Stereo R-CNN demo layout)."""
    import cv2

    folder = Path(folder)
    imgs = []
    for name in ("left.png", "right.png"):
        bgr = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(folder / name)
        imgs.append(np.ascontiguousarray(bgr[..., ::-1]))
    pts = np.fromfile(folder / "lidar.bin", dtype="<f4").reshape(-1, 4)
    cal = read_kitti_calib(folder / "calib.txt")
    return KittiPair(imgs[0], imgs[1], pts, cal["P2"], cal["P3"], cal["R0_rect"], cal["Tr_velo_to_cam"])


def project_lidar_depth(pair: KittiPair, *, min_depth: float = 0.5) -> np.ndarray:
    """(H, W) float32 depth of the left camera from the scan: NaN where no point lands, else the nearest."""
    h, w = pair.left.shape[:2]
    xyz1 = np.concatenate([pair.points[:, :3].astype(np.float64), np.ones((len(pair.points), 1))], axis=1)
    rect = pair.R0 @ (pair.Tr @ xyz1.T)  # (3, N) in rectified cam 0
    uvw = pair.P2 @ np.vstack([rect, np.ones((1, rect.shape[1]))])
    z = uvw[2]
    ok = z > min_depth
    u = np.floor(uvw[0, ok] / z[ok] + 0.5).astype(np.int64)  # pixel centres at integer coordinates
    v = np.floor(uvw[1, ok] / z[ok] + 0.5).astype(np.int64)
    z = z[ok]
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v, z = u[inside], v[inside], z[inside]
    depth = np.full(h * w, np.inf, dtype=np.float64)
    np.minimum.at(depth, v * w + u, z)
    depth[~np.isfinite(depth)] = np.nan
    return depth.reshape(h, w).astype(np.float32)


def depth_metrics(est: np.ndarray, ref: np.ndarray, geom: StereoGeometry, *, max_depth: float | None = None) -> dict[str, Any]:
    """The module doc's metrics of ``est`` against ``ref`` (both (H, W) metres, NaN/inf = none).

    ``max_depth``: reference pixels farther than this are left out (both sides alike)."""
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    has_ref = np.isfinite(ref) & (ref > 0)
    if max_depth is not None:
        has_ref &= ref <= max_depth
    has_est = np.isfinite(est) & (est > 0)
    both = has_ref & has_est
    n_ref, n_both = int(has_ref.sum()), int(both.sum())
    out: dict[str, Any] = {"reference_pixels": n_ref, "scored_pixels": n_both,
                           "coverage": n_both / n_ref if n_ref else None}
    if n_both == 0:
        out.update(abs_rel=None, within_3px=None, within_5pct=None, within_3px_or_5pct=None, median_abs_err_m=None)
        return out
    ze, zr = est[both], ref[both]
    de, dr = geom.fb / ze, geom.fb / zr
    rel = np.abs(ze - zr) / zr
    px = np.abs(de - dr)
    out.update(abs_rel=float(rel.mean()), within_3px=float((px <= 3.0).mean()), within_5pct=float((rel <= 0.05).mean()),
               within_3px_or_5pct=float(((px <= 3.0) | (rel <= 0.05)).mean()),
               median_abs_err_m=float(np.median(np.abs(ze - zr))))
    return out
