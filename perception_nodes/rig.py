"""One model of a sensor rig (cameras with intrinsics and poses, LiDARs with poses) from three sources.

* **KITTI calib files** (object/stereo benchmark format: ``P0..P3``, ``R0_rect``, ``Tr_velo_to_cam``,
  optional ``Tr_imu_to_velo``): :func:`rig_from_kitti`. Each KITTI camera is a *rectified* camera: its
  optical frame is the rectified camera-0 frame shifted by ``K^-1 P[:, 3]``, its intrinsics ``P[:3, :3]``.
* **ROS ``camera_calibration`` YAML** (``image_width``, ``image_height``, ``camera_name``,
  ``camera_matrix`` / ``distortion_coefficients`` / ``rectification_matrix`` / ``projection_matrix`` as
  ``{rows, cols, data}``, ``distortion_model``): :func:`load_ros_camera_yaml`, intrinsics only.
* **The project's extrinsics YAML** (``calibration/*.yaml``: static transforms, see
  ``calibration/README.md``), optionally with ``cameras:`` (name, frame, intrinsics file) and ``lidars:``
  (name, frame) sections: :func:`load_rig_model`. The ``transforms`` alone are what the nodes' transform
  tree reads (:func:`perception_nodes.calibration.load_rig`).

At runtime the same :class:`Rig` is built from what a node receives: ``CameraInfo`` plus the transform tree
(:func:`rig_from_tree`). Every loader raises :class:`~perception_nodes.errors.CalibrationError` with the
file and the field that is wrong; a ``CameraInfo`` that fails :class:`CameraModel`'s checks becomes a
CalibrationError naming the file.

Conventions: ``T_a_b`` is the 4x4 pose of frame ``b`` in frame ``a`` (it maps ``b`` coordinates into
``a``), as a ``/tf_static`` transform ``a -> b``. Camera frames are REP 103 optical frames (z forward,
x right, y down); intrinsics project points given in the camera's own optical frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from perception_nodes.calibration import (
    KittiCalib,
    StaticTransform,
    TransformTree,
    load_kitti_calib,
    load_rig,
    matrix_to_quat,
    resolve_calibration_path,
)
from perception_nodes.codecs.camera_info import CameraModel
from perception_nodes.errors import CalibrationError, MalformedMessageError

#: KITTI camera index -> (rig camera name, optical frame); cameras 2/3 use the frames ``convert kitti`` uses
KITTI_CAMERAS = {
    "P0": ("gray_left", "camera_gray_left_optical"),
    "P1": ("gray_right", "camera_gray_right_optical"),
    "P2": ("left", "camera_left_optical"),
    "P3": ("right", "camera_right_optical"),
}
#: KITTI image sizes vary by drive (1224-1242 x 370-376); 1242 x 375 is the most common one
KITTI_IMAGE_SIZE = (1242, 375)


@dataclass(frozen=True, eq=False)
class RigCamera:
    """A camera of the rig: its model (frame_id = its optical frame) and its pose in the base frame."""

    name: str
    model: CameraModel
    T_base_camera: np.ndarray  # 4x4

    @property
    def frame_id(self) -> str:
        return self.model.frame_id

    @property
    def intrinsics(self) -> np.ndarray:
        """3x3 matrix projecting points in this camera's own (rectified) optical frame: P[:3, :3]."""
        return self.model.P[:, :3]

    @property
    def baseline_tx(self) -> float:
        """ROS stereo term ``P[0, 3]`` (``-fx * B`` for the right camera of a pair, else 0)."""
        return float(self.model.P[0, 3])


@dataclass(frozen=True, eq=False)
class RigLidar:
    """A LiDAR of the rig and its pose in the base frame."""

    name: str
    frame_id: str
    T_base_lidar: np.ndarray  # 4x4


@dataclass(frozen=True, eq=False)
class Rig:
    """Cameras and LiDARs with their poses in ``base_frame`` (see the module doc for conventions).

    ``frames`` holds the poses of other frames the source named (e.g. KITTI's ``imu``).
    """

    base_frame: str
    cameras: dict[str, RigCamera] = field(default_factory=dict)
    lidars: dict[str, RigLidar] = field(default_factory=dict)
    frames: dict[str, np.ndarray] = field(default_factory=dict)

    def T_camera_lidar(self, camera: str, lidar: str | None = None) -> np.ndarray:
        """4x4 mapping points of ``lidar`` (default: the only/first LiDAR) into ``camera``'s optical frame."""
        cam = self._camera(camera)
        lid = self._lidar(lidar)
        return np.linalg.inv(cam.T_base_camera) @ lid.T_base_lidar

    def with_camera_pose(self, camera: str, T_base_camera: np.ndarray) -> Rig:
        """A copy with one camera moved (what a perturbation or a re-calibration does)."""
        cam = self._camera(camera)
        cams = dict(self.cameras)
        cams[camera] = dataclasses.replace(cam, T_base_camera=np.asarray(T_base_camera, dtype=np.float64))
        return dataclasses.replace(self, cameras=cams)

    def stereo_pairs(self) -> list[tuple[str, str]]:
        """(left, right) camera names: a camera with ``P[0, 3] < 0`` (ROS: ``-fx * B``) paired with the
        camera of the same intrinsics and image size whose ``P[0, 3]`` is 0."""
        pairs = []
        for right in self.cameras.values():
            if right.baseline_tx >= 0:
                continue
            for left in self.cameras.values():
                if (left.baseline_tx == 0 and left.model.width == right.model.width
                        and left.model.height == right.model.height
                        and np.allclose(left.intrinsics, right.intrinsics, rtol=1e-6)):
                    pairs.append((left.name, right.name))
                    break
        return pairs

    def transform_tree(self) -> TransformTree:
        """base -> every sensor frame, as the nodes' transform tree."""
        items = [StaticTransform(self.base_frame, c.frame_id, c.T_base_camera) for c in self.cameras.values()]
        items += [StaticTransform(self.base_frame, lid.frame_id, lid.T_base_lidar) for lid in self.lidars.values()]
        items += [StaticTransform(self.base_frame, f, m) for f, m in self.frames.items()]
        return TransformTree(items)

    def _camera(self, name: str) -> RigCamera:
        try:
            return self.cameras[name]
        except KeyError:
            raise CalibrationError(f"rig has no camera {name!r} (cameras: {', '.join(self.cameras) or 'none'})") from None

    def _lidar(self, name: str | None) -> RigLidar:
        if name is None:
            if not self.lidars:
                raise CalibrationError("rig has no LiDAR")
            return next(iter(self.lidars.values()))
        try:
            return self.lidars[name]
        except KeyError:
            raise CalibrationError(f"rig has no LiDAR {name!r} (LiDARs: {', '.join(self.lidars) or 'none'})") from None


# ------------------------------------------------------------------------------------------- KITTI
def kitti_camera_models(calib: KittiCalib, image_size: tuple[int, int] = KITTI_IMAGE_SIZE,
                        cameras: tuple[str, ...] = ("P2", "P3")) -> dict[str, tuple[CameraModel, np.ndarray]]:
    """Per KITTI camera (``"P0".."P3"``): its rectified :class:`CameraModel` (ROS convention: the first
    camera listed has ``P[0, 3] = 0``, the others ``-fx * B`` relative to it) and ``T_cam_rect0``."""
    out: dict[str, tuple[CameraModel, np.ndarray]] = {}
    ref_x = None
    w, h = (int(v) for v in image_size)
    for key in cameras:
        if key not in KITTI_CAMERAS:
            raise CalibrationError(f"unknown KITTI camera {key!r} (use P0..P3)")
        p = calib.P[key]
        k = p[:3, :3].copy()
        if abs(k[2, 2] - 1.0) > 1e-9 or k[1, 0] or k[2, 0] or k[2, 1]:
            raise CalibrationError(f"{key}: left 3x3 is not an intrinsic matrix")
        t = np.linalg.solve(k, p[:, 3])  # X_cam = X_rect0 + t
        T = np.eye(4)
        T[:3, 3] = t
        centre_x = -t[0]  # optical centre along rectified x (m)
        ref_x = centre_x if ref_x is None else ref_x
        proj = np.zeros((3, 4))
        proj[:3, :3] = k
        proj[0, 3] = -k[0, 0] * (centre_x - ref_x)
        try:
            model = CameraModel(width=w, height=h, frame_id=KITTI_CAMERAS[key][1], distortion_model="plumb_bob",
                                K=k, D=np.zeros(5), R=np.eye(3), P=proj)
        except MalformedMessageError as exc:
            raise CalibrationError(f"{key}: {exc.reason}") from exc
        out[key] = (model, T)
    return out


def rig_from_kitti(calib: KittiCalib | str | Path, *, image_size: tuple[int, int] = KITTI_IMAGE_SIZE,
                   cameras: tuple[str, ...] = ("P2", "P3"), base_rig: str | Path | None = "kitti_hdl64.yaml",
                   lidar_frame: str = "velodyne") -> Rig:
    """The rig of a KITTI calib file: cameras ``left``/``right`` (P2/P3; ``gray_left``/``gray_right`` for
    P0/P1 when asked), the Velodyne, and ``imu`` when the file has ``Tr_imu_to_velo``.

    ``base_rig``: a project rig YAML giving ``base_link -> velodyne`` (default ``kitti_hdl64.yaml``: the
    LiDAR 1.73 m above the ground point); None makes the Velodyne frame the base frame.
    """
    if not isinstance(calib, KittiCalib):
        calib = load_kitti_calib(calib)
    if base_rig is None:
        base, T_base_velo = lidar_frame, np.eye(4)
    else:
        tree = load_rig(base_rig)
        base = "base_link"
        T_base_velo = tree.lookup(base, lidar_frame)
    rect0_from_velo = np.eye(4)
    rect0_from_velo[:3, :3] = calib.R0_rect
    rect0_from_velo = rect0_from_velo @ calib.Tr_velo_to_cam
    cams = {}
    for key, (model, T_cam_rect0) in kitti_camera_models(calib, image_size, cameras).items():
        T_cam_velo = T_cam_rect0 @ rect0_from_velo
        name = KITTI_CAMERAS[key][0]
        cams[name] = RigCamera(name, model, T_base_velo @ np.linalg.inv(T_cam_velo))
    lidars = {lidar_frame: RigLidar(lidar_frame, lidar_frame, T_base_velo)}
    frames = {}
    if calib.Tr_imu_to_velo is not None:
        frames["imu"] = T_base_velo @ calib.Tr_imu_to_velo
    return Rig(base, cams, lidars, frames)


# ------------------------------------------------------------------------------------- ROS YAML
_ROS_MATRICES = {"camera_matrix": (3, 3), "rectification_matrix": (3, 3), "projection_matrix": (3, 4)}


def _ros_matrix(doc: dict, key: str, where: str, shape: tuple[int, int] | None) -> np.ndarray:
    m = doc.get(key)
    if not isinstance(m, dict) or "data" not in m:
        raise CalibrationError(f"{where}: {key} missing or not a {{rows, cols, data}} map")
    try:
        rows, cols = int(m.get("rows", -1)), int(m.get("cols", -1))
        data = np.asarray(m["data"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: {key}: {exc}") from exc
    if rows * cols != data.size:
        raise CalibrationError(f"{where}: {key} says {rows}x{cols} but has {data.size} values")
    if shape is not None and (rows, cols) != shape:
        raise CalibrationError(f"{where}: {key} must be {shape[0]}x{shape[1]}, is {rows}x{cols}")
    return data.reshape(rows, cols)


def load_ros_camera_yaml(path: str | Path, frame_id: str | None = None) -> CameraModel:
    """A ROS ``camera_calibration`` / ``camera_info_manager`` YAML as a validated :class:`CameraModel`.

    ``frame_id``: the camera's optical frame (the file does not carry one); default ``camera_name``.
    """
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CalibrationError(f"{p}: cannot read camera calibration YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise CalibrationError(f"{p}: not a camera calibration YAML (expected a map)")
    missing = [k for k in ("image_width", "image_height", "camera_matrix", "distortion_model",
                           "distortion_coefficients", "projection_matrix") if k not in doc]
    if missing:
        raise CalibrationError(f"{p}: camera calibration YAML misses {', '.join(missing)}")
    mats = {k: _ros_matrix(doc, k, str(p), shape) for k, shape in _ROS_MATRICES.items() if k in doc}
    d = _ros_matrix(doc, "distortion_coefficients", str(p), None).reshape(-1)
    try:
        width, height = int(doc["image_width"]), int(doc["image_height"])
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{p}: image_width/image_height: {exc}") from exc
    name = str(doc.get("camera_name") or p.stem)
    try:
        return CameraModel(width=width, height=height, frame_id=frame_id or name,
                           distortion_model=str(doc["distortion_model"]), K=mats["camera_matrix"], D=d,
                           R=mats.get("rectification_matrix", np.eye(3)), P=mats["projection_matrix"])
    except MalformedMessageError as exc:
        raise CalibrationError(f"{p}: {exc.reason}") from exc


def ros_camera_yaml(model: CameraModel, camera_name: str) -> str:
    """The ``camera_calibration`` YAML text of ``model`` (what :func:`load_ros_camera_yaml` reads)."""

    def mat(a: np.ndarray) -> dict[str, Any]:
        a = np.atleast_2d(a)
        return {"rows": int(a.shape[0]), "cols": int(a.shape[1]), "data": [float(v) for v in a.reshape(-1)]}

    doc = {"image_width": model.width, "image_height": model.height, "camera_name": camera_name,
           "camera_matrix": mat(model.K), "distortion_model": model.distortion_model,
           "distortion_coefficients": mat(model.D[None, :]), "rectification_matrix": mat(model.R),
           "projection_matrix": mat(model.P)}
    return yaml.safe_dump(doc, sort_keys=False)


# ------------------------------------------------------------------------------- extrinsics YAML
def load_rig_model(path: str | Path) -> Rig:
    """A project rig YAML as a :class:`Rig`: ``transforms`` (as :func:`load_rig`), plus

    ``base_frame`` (default ``base_link``), ``cameras: [{name, frame, intrinsics}]`` (``intrinsics``: a ROS
    camera YAML, relative to the rig file) and ``lidars: [{name, frame}]``. Every named frame must be
    reachable from the base frame through the transforms.
    """
    p = resolve_calibration_path(path)
    tree = load_rig(p)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:  # load_rig read it already; kept for a file changed in between
        raise CalibrationError(f"{p}: {exc}") from exc
    base = str(doc.get("base_frame", "base_link"))
    cams: dict[str, RigCamera] = {}
    for i, c in enumerate(doc.get("cameras") or []):
        if not isinstance(c, dict) or not {"name", "frame", "intrinsics"} <= set(c):
            raise CalibrationError(f"{p}: cameras[{i}] needs name, frame and intrinsics")
        intr = Path(str(c["intrinsics"]))
        intr = intr if intr.is_absolute() else p.parent / intr
        model = load_ros_camera_yaml(intr, frame_id=str(c["frame"]))
        cams[str(c["name"])] = RigCamera(str(c["name"]), model, tree.lookup(base, str(c["frame"])))
    lidars: dict[str, RigLidar] = {}
    for i, lid in enumerate(doc.get("lidars") or []):
        if not isinstance(lid, dict) or not {"name", "frame"} <= set(lid):
            raise CalibrationError(f"{p}: lidars[{i}] needs name and frame")
        lidars[str(lid["name"])] = RigLidar(str(lid["name"]), str(lid["frame"]), tree.lookup(base, str(lid["frame"])))
    return Rig(base, cams, lidars)


def rig_yaml(rig: Rig, intrinsics: dict[str, str], name: str = "rig") -> str:
    """A project rig YAML for ``rig`` (``intrinsics``: camera name -> ROS camera YAML path to reference)."""
    transforms = []
    poses = [(c.frame_id, c.T_base_camera) for c in rig.cameras.values()]
    poses += [(lid.frame_id, lid.T_base_lidar) for lid in rig.lidars.values()] + list(rig.frames.items())
    for frame, T in poses:
        transforms.append({"parent": rig.base_frame, "child": frame,
                           "translation": [float(v) for v in T[:3, 3]],
                           "rotation": [float(v) for v in matrix_to_quat(T[:3, :3])]})
    doc = {"name": name, "base_frame": rig.base_frame, "transforms": transforms,
           "cameras": [{"name": c.name, "frame": c.frame_id, "intrinsics": intrinsics[c.name]}
                       for c in rig.cameras.values()],
           "lidars": [{"name": lid.name, "frame": lid.frame_id} for lid in rig.lidars.values()]}
    return yaml.safe_dump(doc, sort_keys=False)


# ---------------------------------------------------------------------------------- at runtime
def rig_from_tree(tree: TransformTree, base_frame: str, cameras: dict[str, CameraModel],
                  lidars: dict[str, str]) -> Rig:
    """A rig from a node's transform tree and the CameraInfo it received (``cameras``: name -> model,
    frame = ``model.frame_id``; ``lidars``: name -> frame). CalibrationError when a frame is unknown."""
    cams = {n: RigCamera(n, m, tree.lookup(base_frame, m.frame_id.lstrip("/"))) for n, m in cameras.items()}
    lids = {n: RigLidar(n, f, tree.lookup(base_frame, f.lstrip("/"))) for n, f in lidars.items()}
    return Rig(base_frame, cams, lids)


__all__ = ["KITTI_CAMERAS", "KITTI_IMAGE_SIZE", "Rig", "RigCamera", "RigLidar", "kitti_camera_models",
           "load_rig_model", "load_ros_camera_yaml", "rig_from_kitti", "rig_from_tree", "rig_yaml", "ros_camera_yaml"]
