"""Rig calibration: static transforms from YAML files and /tf_static, and KITTI calib files.

tf2 is not on PyPI and the core must not need ROS, so static transforms live in a small buffer here:
the nodes fill it from the rig YAML (``calibration/``) and from ``/tf_static`` messages in bags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from perception_nodes.errors import CalibrationError

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration"


def quat_to_matrix(q: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
    """Rotation matrix of a quaternion given as (x, y, z, w)."""
    x, y, z, w = (float(v) for v in q)
    n = x * x + y * y + z * z + w * w
    if not np.isfinite(n) or n < 1e-12:
        raise CalibrationError(f"invalid quaternion {q!r}")
    s = 2.0 / n
    return np.array(
        [
            [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
            [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
            [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
        ]
    )


def matrix_to_quat(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix (Shepperd's method, w >= 0)."""
    m = np.asarray(r, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q = q if w >= 0 else -q
    return tuple(float(v) for v in q / np.linalg.norm(q))


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = translation
    return t


@dataclass(frozen=True)
class StaticTransform:
    """Pose of ``child`` in ``parent`` as a 4x4 matrix (maps child coordinates into parent)."""

    parent: str
    child: str
    matrix: np.ndarray

    @property
    def translation(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.matrix[:3, 3])

    @property
    def rotation(self) -> tuple[float, float, float, float]:
        return matrix_to_quat(self.matrix[:3, :3])


class StaticTransforms:
    """A static transform tree; :meth:`lookup` composes along the path between two frames."""

    def __init__(self, transforms: list[StaticTransform] | None = None) -> None:
        self._edges: dict[str, StaticTransform] = {}  # keyed by child (a tree: one parent per child)
        for t in transforms or []:
            self.add(t)

    def add(self, t: StaticTransform) -> None:
        if not np.all(np.isfinite(t.matrix)):
            raise CalibrationError(f"non-finite transform {t.parent} -> {t.child}")
        self._edges[t.child] = t

    def frames(self) -> set[str]:
        return set(self._edges) | {t.parent for t in self._edges.values()}

    def _to_root(self, frame: str) -> tuple[list[str], np.ndarray]:
        chain, m, seen = [frame], np.eye(4), {frame}
        while frame in self._edges:
            t = self._edges[frame]
            m = t.matrix @ m
            frame = t.parent
            if frame in seen:
                raise CalibrationError(f"transform loop at frame {frame!r}")
            seen.add(frame)
            chain.append(frame)
        return chain, m

    def lookup(self, target: str, source: str) -> np.ndarray:
        """4x4 matrix mapping points in ``source`` into ``target``."""
        if target == source:
            return np.eye(4)
        src_chain, src_to_root = self._to_root(source)
        tgt_chain, tgt_to_root = self._to_root(target)
        if src_chain[-1] != tgt_chain[-1]:
            known = ", ".join(sorted(self.frames())) or "none"
            raise CalibrationError(
                f"no transform from {source!r} to {target!r} (known frames: {known}); "
                "set calibration_file or publish /tf_static"
            )
        return np.linalg.inv(tgt_to_root) @ src_to_root

    def as_list(self) -> list[StaticTransform]:
        return list(self._edges.values())


def resolve_calibration_path(name: str | Path) -> Path:
    """A path as given, or a bare file name looked up in the project's ``calibration/`` folder."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    cand = CALIBRATION_DIR / p
    if cand.is_file():
        return cand
    raise CalibrationError(f"calibration file {str(name)!r} not found (also looked in {CALIBRATION_DIR})")


def load_rig(path: str | Path) -> StaticTransforms:
    """Load a rig YAML (format in ``calibration/README.md``)."""
    p = resolve_calibration_path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
        out = []
        for item in doc.get("transforms", []):
            r = quat_to_matrix(item.get("rotation", [0, 0, 0, 1]))
            t = np.asarray(item.get("translation", [0, 0, 0]), dtype=np.float64)
            if t.shape != (3,):
                raise CalibrationError(f"{p}: translation of {item.get('child')!r} needs 3 numbers")
            out.append(StaticTransform(str(item["parent"]), str(item["child"]), make_transform(r, t)))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{p}: cannot read rig calibration: {exc}") from exc
    if not out:
        raise CalibrationError(f"{p}: no transforms")
    return StaticTransforms(out)


def transforms_from_tf_message(msg: Any) -> list[StaticTransform]:
    """``tf2_msgs/TFMessage`` (rosbags or rclpy) to static transforms."""
    out = []
    for ts in msg.transforms:
        tr, q = ts.transform.translation, ts.transform.rotation
        m = make_transform(quat_to_matrix((q.x, q.y, q.z, q.w)), np.array([tr.x, tr.y, tr.z]))
        out.append(StaticTransform(ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/"), m))
    return out


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to the first three columns of (N, >=3) points (other columns kept)."""
    out = np.array(points, dtype=np.float32, copy=True)
    r = matrix[:3, :3].astype(np.float32)
    t = matrix[:3, 3].astype(np.float32)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    # nine multiply-adds per point, elementwise: a (N,3)@(3,3) BLAS call is slower here and spawns
    # threads that fight the rest of the graph for cores
    for i in range(3):
        out[:, i] = r[i, 0] * x + r[i, 1] * y + r[i, 2] * z + t[i]
    return out


@dataclass(frozen=True)
class KittiCalib:
    """A KITTI object-benchmark ``calib/*.txt``: rectified projections and LiDAR->camera extrinsics."""

    P: dict[str, np.ndarray]  # "P0".."P3", 3x4
    R0_rect: np.ndarray  # 3x3
    Tr_velo_to_cam: np.ndarray  # 4x4 (velodyne -> camera 0, unrectified)

    @property
    def velo_to_rect(self) -> np.ndarray:
        """4x4 mapping Velodyne points into rectified camera-0 coordinates."""
        r = np.eye(4)
        r[:3, :3] = self.R0_rect
        return r @ self.Tr_velo_to_cam

    def camera_offset(self, cam: str) -> float:
        """x offset (m) of rectified camera ``cam`` from camera 0: -P[0,3]/P[0,0]."""
        p = self.P[cam]
        return float(-p[0, 3] / p[0, 0])

    @property
    def stereo_baseline(self) -> float:
        """Baseline between the colour cameras 2 and 3 in metres."""
        p2, p3 = self.P["P2"], self.P["P3"]
        return float((p2[0, 3] - p3[0, 3]) / p2[0, 0])


def load_kitti_calib(path: str | Path) -> KittiCalib:
    """Parse a KITTI object calib file (``KEY: v1 v2 ...`` lines)."""
    p = Path(path)
    values: dict[str, np.ndarray] = {}
    try:
        for line in p.read_text().splitlines():
            if ":" not in line:
                continue
            key, rest = line.split(":", 1)
            nums = rest.split()
            if nums:
                values[key.strip()] = np.array([float(v) for v in nums])
        P = {k: values[k].reshape(3, 4) for k in ("P0", "P1", "P2", "P3")}
        r0 = values["R0_rect"].reshape(3, 3)
        tr = np.eye(4)
        tr[:3, :] = values["Tr_velo_to_cam"].reshape(3, 4)
    except (KeyError, ValueError) as exc:
        raise CalibrationError(f"{p}: not a KITTI calib file ({exc})") from exc
    if not all(np.all(np.isfinite(v)) for v in (*P.values(), r0, tr)):
        raise CalibrationError(f"{p}: non-finite calibration values")
    return KittiCalib(P=P, R0_rect=r0, Tr_velo_to_cam=tr)


def tf_message(transforms: list[StaticTransform], stamp_ns: int, backend: Any) -> Any:
    """``tf2_msgs/TFMessage`` for ``/tf_static`` from static transforms."""
    from perception_nodes.codecs.backend import make_header

    items = []
    for t in transforms:
        (x, y, z), (qx, qy, qz, qw) = t.translation, t.rotation
        items.append(
            backend.new(
                "geometry_msgs/msg/TransformStamped",
                header=make_header(backend, stamp_ns, t.parent),
                child_frame_id=t.child,
                transform=backend.new(
                    "geometry_msgs/msg/Transform",
                    translation=backend.new("geometry_msgs/msg/Vector3", x=x, y=y, z=z),
                    rotation=backend.new("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw),
                ),
            )
        )
    return backend.new("tf2_msgs/msg/TFMessage", transforms=items)
