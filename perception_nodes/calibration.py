"""Rig calibration: transforms from YAML files, /tf_static and /tf, and KITTI calib files.

tf2 is not on PyPI and the core must not need ROS, so transforms live in a small tree here
(:class:`TransformTree`): the nodes fill it from the rig YAML (``calibration/``), from ``/tf_static``
(static, latched) and from ``/tf`` (dynamic), live and in bags alike.

Dynamic transforms are kept as the *latest* transform per child frame and used for every later message,
whatever its stamp: no history, interpolation or extrapolation check as in tf2's buffer. That is exact for
frames that do not move relative to each other while a cloud is processed (sensor mounts published on
``/tf`` by a robot_state_publisher, or re-calibrations) and for frames above ``base_link`` (``odom``,
``map``), which the sensor-to-base lookup never crosses: lookups compose only up to the two frames' lowest
common ancestor. A sensor on a moving joint needs time-interpolated lookups, which this tree does not do.
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


class TransformTree:
    """Transforms between frames, one parent per child; :meth:`lookup` composes along the path between two.

    Edges come from the rig file and ``/tf_static`` (static) and from ``/tf`` (dynamic, latest per child:
    see the module doc). A newer edge for a child replaces the older one, whichever topic it came on, as a
    re-published ``/tf_static`` replaces the rig file's calibration. An edge that would close a loop is
    rejected, so one bad message cannot break lookups that worked before it.
    """

    def __init__(self, transforms: list[StaticTransform] | None = None) -> None:
        self._edges: dict[str, StaticTransform] = {}  # keyed by child (a tree: one parent per child)
        self._dynamic: dict[str, int] = {}  # child -> stamp (ns) of its latest /tf edge
        for t in transforms or []:
            self.add(t)

    def add(self, t: StaticTransform, *, static: bool = True, stamp_ns: int = 0) -> None:
        """Insert or replace the edge of ``t.child``; CalibrationError for a bad or loop-closing edge."""
        if not t.parent or not t.child:
            raise CalibrationError(f"transform with an empty frame id ({t.parent!r} -> {t.child!r})")
        if t.parent == t.child:
            raise CalibrationError(f"transform from frame {t.child!r} to itself")
        if not np.all(np.isfinite(t.matrix)):
            raise CalibrationError(f"non-finite transform {t.parent} -> {t.child}")
        if t.child in self._to_root(t.parent)[0]:
            raise CalibrationError(f"transform {t.parent} -> {t.child} would close a loop: ignored")
        self._edges[t.child] = t
        if static:
            self._dynamic.pop(t.child, None)
        else:
            self._dynamic[t.child] = int(stamp_ns)

    def update_from_tf_message(self, msg: Any, *, static: bool) -> int:
        """Add every transform of a ``tf2_msgs/TFMessage``; returns how many were taken.

        Each transform stands alone: the valid ones are applied even when others in the same message are
        bad, and then CalibrationError names the bad ones (so the caller counts and reports them).
        """
        errors: list[str] = []
        taken = 0
        for ts in msg.transforms:
            try:
                t = _transform_of(ts)
                stamp = ts.header.stamp
                self.add(t, static=static, stamp_ns=int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec))
                taken += 1
            except CalibrationError as exc:
                errors.append(str(exc))
        if errors:
            topic = "/tf_static" if static else "/tf"
            raise CalibrationError(f"{topic}: {len(errors)} of {len(msg.transforms)} transforms rejected: "
                                   + "; ".join(errors[:3]))
        return taken

    def is_dynamic(self, child: str) -> bool:
        """Whether the current edge of ``child`` came from ``/tf``."""
        return child in self._dynamic

    def frames(self) -> set[str]:
        return set(self._edges) | {t.parent for t in self._edges.values()}

    def _to_root(self, frame: str) -> tuple[list[str], list[np.ndarray]]:
        """Frames from ``frame`` up to its root, and for each the matrix mapping ``frame`` into it."""
        chain, mats, seen = [frame], [np.eye(4)], {frame}
        while frame in self._edges:
            t = self._edges[frame]
            mats.append(t.matrix @ mats[-1])
            frame = t.parent
            if frame in seen:
                raise CalibrationError(f"transform loop at frame {frame!r}")
            seen.add(frame)
            chain.append(frame)
        return chain, mats

    def lookup(self, target: str, source: str) -> np.ndarray:
        """4x4 matrix mapping points in ``source`` into ``target``.

        Composes up to the lowest common ancestor only, so edges above it (e.g. a moving ``map`` ->
        ``base_link`` from ``/tf``) neither change nor add rounding to a sensor-to-base lookup.
        """
        if target == source:
            return np.eye(4)
        src_chain, src_mats = self._to_root(source)
        tgt_chain, tgt_mats = self._to_root(target)
        tgt_index = {f: i for i, f in enumerate(tgt_chain)}
        for i, frame in enumerate(src_chain):
            j = tgt_index.get(frame)
            if j is not None:
                if j == 0:  # target is an ancestor of source
                    return src_mats[i]
                return np.linalg.inv(tgt_mats[j]) @ src_mats[i]
        known = ", ".join(sorted(self.frames())) or "none"
        raise CalibrationError(
            f"no transform from {source!r} to {target!r} (known frames: {known}); "
            "set calibration_file or publish /tf_static or /tf"
        )

    def as_list(self) -> list[StaticTransform]:
        return list(self._edges.values())


#: the tree's former name (it held static transforms only)
StaticTransforms = TransformTree


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


def _transform_of(ts: Any) -> StaticTransform:
    """One ``geometry_msgs/TransformStamped`` (rosbags or rclpy) as a transform (leading ``/`` dropped)."""
    tr, q = ts.transform.translation, ts.transform.rotation
    m = make_transform(quat_to_matrix((q.x, q.y, q.z, q.w)), np.array([tr.x, tr.y, tr.z], dtype=np.float64))
    return StaticTransform(ts.header.frame_id.lstrip("/"), ts.child_frame_id.lstrip("/"), m)


def transforms_from_tf_message(msg: Any) -> list[StaticTransform]:
    """``tf2_msgs/TFMessage`` (rosbags or rclpy) to transforms; CalibrationError on the first bad one."""
    return [_transform_of(ts) for ts in msg.transforms]


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
    Tr_imu_to_velo: np.ndarray | None = None  # 4x4 (IMU -> velodyne) when the file has it

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


#: KITTI calib keys -> number of values (object benchmark; ``Tr_imu_to_velo`` is optional)
KITTI_KEYS = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "R0_rect": 9, "Tr_velo_to_cam": 12}


def load_kitti_calib(path: str | Path) -> KittiCalib:
    """Parse a KITTI object calib file (``KEY: v1 v2 ...`` lines); CalibrationError naming what is wrong.

    The raw-data files' names (``R_rect_00``, ``Tr_velo_cam``) are not accepted: this is the
    object-benchmark format (also that of the stereo and tracking benchmarks).
    """
    p = Path(path)
    values: dict[str, np.ndarray] = {}
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{p}: cannot read KITTI calib file ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if ":" not in line:
            continue
        key, rest = line.split(":", 1)
        try:
            nums = [float(v) for v in rest.split()]
        except ValueError as exc:
            raise CalibrationError(f"{p}:{lineno}: {key.strip()}: not a number ({exc})") from exc
        if nums:
            values[key.strip()] = np.array(nums)
    missing = [k for k in KITTI_KEYS if k not in values]
    if missing:
        raise CalibrationError(f"{p}: not a KITTI calib file: missing {', '.join(missing)} "
                               f"(found {', '.join(values) or 'no KEY: values lines'})")
    for key, n in {**KITTI_KEYS, "Tr_imu_to_velo": 12}.items():
        if key in values and values[key].size != n:
            raise CalibrationError(f"{p}: {key} has {values[key].size} values, expected {n}")
    P = {k: values[k].reshape(3, 4) for k in ("P0", "P1", "P2", "P3")}
    r0 = values["R0_rect"].reshape(3, 3)
    tr = np.eye(4)
    tr[:3, :] = values["Tr_velo_to_cam"].reshape(3, 4)
    imu = None
    if "Tr_imu_to_velo" in values:
        imu = np.eye(4)
        imu[:3, :] = values["Tr_imu_to_velo"].reshape(3, 4)
    if not all(np.all(np.isfinite(v)) for v in (*P.values(), r0, tr, *([] if imu is None else [imu]))):
        raise CalibrationError(f"{p}: non-finite calibration values")
    for name, rot in (("R0_rect", r0), ("Tr_velo_to_cam", tr[:3, :3])):
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
            raise CalibrationError(f"{p}: {name} is not a rotation (orthonormal, det +1, to 1e-4)")
    for k, m in P.items():
        if not (m[0, 0] > 0 and m[1, 1] > 0):
            raise CalibrationError(f"{p}: {k} has a non-positive focal length ({m[0, 0]:g}, {m[1, 1]:g})")
    return KittiCalib(P=P, R0_rect=r0, Tr_velo_to_cam=tr, Tr_imu_to_velo=imu)


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
