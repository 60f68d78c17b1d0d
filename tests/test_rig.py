"""One rig model from KITTI calib files, ROS camera_calibration YAML and the project's rig YAML; bad files
and bad CameraInfo rejected with a reason."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.calibration import load_kitti_calib
from perception_nodes.codecs.camera_info import CameraModel, camera_info_msg, camera_model_from_msg
from perception_nodes.errors import CalibrationError, MalformedMessageError
from perception_nodes.rig import (
    load_rig_model,
    load_ros_camera_yaml,
    rig_from_kitti,
    rig_yaml,
    ros_camera_yaml,
)
from tests.conftest import KITTI_OBJECT, SHARED_DATA, require

SRCNN = SHARED_DATA / "kitti_stereo_srcnn/demo"
CALIBS = [KITTI_OBJECT / "calib/000000.txt", KITTI_OBJECT / "calib/000002.txt", SRCNN / "calib.txt"]

#: what ROS camera_calibration writes (values of a made-up 640x480 camera)
ROS_YAML = """image_width: 640
image_height: 480
camera_name: narrow_stereo/left
camera_matrix:
  rows: 3
  cols: 3
  data: [430.2, 0, 306.7, 0, 431.5, 240.9, 0, 0, 1]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.33, 0.11, 0.0005, -0.0003, 0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [402.1, 0, 308.5, 0, 0, 410.7, 241.1, 0, 0, 0, 1, 0]
"""


def _velo(path) -> np.ndarray:
    pts = np.fromfile(path, dtype="<f4").reshape(-1, 4)[:, :3].astype(np.float64)
    return pts[pts[:, 0] > 3.0]


@pytest.mark.parametrize("calib", CALIBS, ids=lambda p: p.parent.name + "/" + p.name)
def test_kitti_rig_projects_as_kittis_own_formula(calib):
    """P_i @ R0_rect @ Tr_velo_to_cam (KITTI's documented projection) vs the rig's pose + intrinsics."""
    c = load_kitti_calib(require(calib))
    rig = rig_from_kitti(c)
    pts = _velo(SRCNN / "lidar.bin")
    X = np.c_[pts, np.ones(len(pts))]
    r0 = np.eye(4)
    r0[:3, :3] = c.R0_rect
    for cam, key in (("left", "P2"), ("right", "P3")):
        ref = (c.P[key] @ r0 @ c.Tr_velo_to_cam @ X.T).T
        q = (rig.T_camera_lidar(cam) @ X.T).T[:, :3] @ rig.cameras[cam].intrinsics.T
        # pixels up to ~1000 px: float64 rounding of the composed transforms, far below a pixel
        assert np.allclose(q[:, :2] / q[:, 2:], ref[:, :2] / ref[:, 2:], atol=1e-6)
    # lidar 1.73 m above base_link (kitti_hdl64.yaml), the stereo pair and KITTI's IMU are in the model
    assert np.allclose(rig.lidars["velodyne"].T_base_lidar[:3, 3], [0, 0, 1.73])
    assert rig.stereo_pairs() == [("left", "right")]
    assert "imu" in rig.frames
    # ROS convention: right P[0, 3] = -fx * B, B the right optical centre's x in the left camera frame
    # (exact: K^-1 P[:, 3]; KITTI's quick (P2[0,3] - P3[0,3]) / fx ignores P[2, 3] and is within 1 %)
    baseline = -rig.cameras["right"].baseline_tx / rig.cameras["right"].intrinsics[0, 0]
    left_T_right = np.linalg.inv(rig.cameras["left"].T_base_camera) @ rig.cameras["right"].T_base_camera
    assert math.isclose(baseline, left_T_right[0, 3], rel_tol=1e-9)
    assert math.isclose(baseline, c.stereo_baseline, rel_tol=0.01)


def test_ros_yaml_is_parsed_field_by_field(tmp_path):
    f = tmp_path / "left.yaml"
    f.write_text(ROS_YAML)
    m = load_ros_camera_yaml(f)
    assert (m.width, m.height, m.frame_id, m.distortion_model) == (640, 480, "narrow_stereo/left", "plumb_bob")
    assert m.K[0, 0] == 430.2 and m.K[1, 2] == 240.9 and m.D[0] == -0.33 and m.P[1, 1] == 410.7
    assert load_ros_camera_yaml(f, frame_id="cam_optical").frame_id == "cam_optical"
    back = tmp_path / "back.yaml"
    back.write_text(ros_camera_yaml(m, "narrow_stereo/left"))
    assert load_ros_camera_yaml(back) == m


def test_three_sources_give_one_rig(tmp_path):
    """KITTI calib -> ROS camera YAMLs + project rig YAML -> the same cameras, poses and projections."""
    kitti = rig_from_kitti(require(SRCNN / "calib.txt"))
    names = {}
    for name, cam in kitti.cameras.items():
        (tmp_path / f"{name}.yaml").write_text(ros_camera_yaml(cam.model, name))
        names[name] = f"{name}.yaml"
    rig_file = tmp_path / "rig.yaml"
    rig_file.write_text(rig_yaml(kitti, names, "kitti_srcnn"))
    rig = load_rig_model(rig_file)
    assert set(rig.cameras) == {"left", "right"} and set(rig.lidars) == {"velodyne"}
    for name in ("left", "right"):
        assert rig.cameras[name].model == kitti.cameras[name].model
        # quaternions round-trip through YAML floats: 1e-9 of rotation, well under a micro-pixel at 1000 px
        assert np.allclose(rig.T_camera_lidar(name), kitti.T_camera_lidar(name), atol=1e-9)
    assert rig.stereo_pairs() == [("left", "right")]


@pytest.mark.parametrize("text,match", [
    (ROS_YAML.replace("image_width: 640\n", ""), "misses image_width"),
    (ROS_YAML.replace("rows: 3\n  cols: 4", "rows: 3\n  cols: 3"), "projection_matrix says 3x3 but has 12"),
    (ROS_YAML.replace("data: [402.1, 0, 308.5, 0, 0, 410.7, 241.1, 0, 0, 0, 1, 0]",
                      "data: [402.1, 0, 308.5, 0, 410.7, 241.1, 0, 0, 1]").replace("rows: 3\n  cols: 4",
                                                                                    "rows: 3\n  cols: 3"),
     "projection_matrix must be 3x4"),
    (ROS_YAML.replace("plumb_bob", "kannala_brandt"), "unknown distortion model 'kannala_brandt'"),
    (ROS_YAML.replace("data: [430.2, 0, 306.7", "data: [0.0, 0, 306.7"), "zero focal length"),
    (ROS_YAML.replace("image_height: 480", "image_height: 0"), "image size 640x0"),
    (ROS_YAML.replace("data: [402.1,", "data: [1402.1,"), "K and P are inconsistent"),
    ("[1, 2, 3]\n", "expected a map"),
    ("image_width: [\n", "cannot read"),
])
def test_bad_ros_yaml_is_a_calibration_error(tmp_path, text, match):
    f = tmp_path / "cam.yaml"
    f.write_text(text)
    with pytest.raises(CalibrationError, match=match) as info:
        load_ros_camera_yaml(f)
    assert str(f) in str(info.value)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("P2:", "PX:"), "missing P2"),
    (lambda t: t.replace("R0_rect: 9.999239000000e-01", "R0_rect: 9.999239000000e-01 1.0"), "R0_rect has 10 values"),
    (lambda t: t.replace("P3: 7.215377000000e+02", "P3: abc"), "P3: not a number"),
    (lambda t: t.replace("R0_rect: 9.999239000000e-01", "R0_rect: 2.0"), "R0_rect is not a rotation"),
    (lambda t: t.replace("P2: 7.215377000000e+02", "P2: -7.215377000000e+02"), "P2 has a non-positive focal"),
    (lambda t: "", "missing P0, P1, P2, P3, R0_rect, Tr_velo_to_cam"),
])
def test_bad_kitti_calib_is_a_calibration_error(tmp_path, edit, match):
    f = tmp_path / "calib.txt"
    f.write_text(edit(require(SRCNN / "calib.txt").read_text()))
    with pytest.raises(CalibrationError, match=match):
        rig_from_kitti(f)


def test_bad_rig_yaml_is_a_calibration_error(tmp_path):
    (tmp_path / "cam.yaml").write_text(ROS_YAML)
    base = "transforms:\n  - {parent: base_link, child: velodyne, translation: [0, 0, 1.7]}\n"
    cases = [
        (base + "cameras:\n  - {name: left, frame: cam}\n", "cameras\\[0\\] needs name, frame and intrinsics"),
        (base + "cameras:\n  - {name: left, frame: cam, intrinsics: cam.yaml}\n", "no transform from 'cam'"),
        (base + "cameras:\n  - {name: left, frame: velodyne, intrinsics: nope.yaml}\n", "cannot read"),
        (base + "lidars:\n  - {name: top}\n", "lidars\\[0\\] needs name and frame"),
    ]
    for text, match in cases:
        f = tmp_path / "rig.yaml"
        f.write_text(text)
        with pytest.raises(CalibrationError, match=match):
            load_rig_model(f)
    f.write_text(base + "cameras:\n  - {name: left, frame: velodyne, intrinsics: cam.yaml}\n"
                 "lidars:\n  - {name: top, frame: velodyne}\n")
    rig = load_rig_model(f)
    assert rig.cameras["left"].frame_id == "velodyne" and rig.lidars["top"].T_base_lidar[2, 3] == 1.7


# ------------------------------------------------------------------------------ bad CameraInfo
K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
GOOD = dict(width=640, height=480, frame_id="cam", distortion_model="plumb_bob", K=K, D=np.zeros(5), R=np.eye(3),
            P=np.hstack([K, np.zeros((3, 1))]))


def _with(**change):
    return {**GOOD, **change}


def _p(**at):
    p = GOOD["P"].copy()
    for (i, j), v in ((tuple(int(c) for c in k[1:]), v) for k, v in at.items()):
        p[i, j] = v
    return p


def _k(**at):
    k = K.copy()
    for (i, j), v in ((tuple(int(c) for c in key[1:]), v) for key, v in at.items()):
        k[i, j] = v
    return k


@pytest.mark.parametrize("fields,match", [
    (_with(K=_k(k00=0.0)), "K has a zero focal length"),
    (_with(K=_k(k11=-500.0)), "K has a negative focal length"),
    (_with(K=_k(k00=math.nan)), "K has non-finite values"),
    (_with(P=_p(p11=0.0)), "P has a zero focal length"),
    (_with(P=_p(p00=math.inf)), "P has non-finite values"),
    (_with(K=np.zeros(8)), "K has 8 values"),
    (_with(P=np.zeros(9)), "P has 9 values"),
    (_with(R=np.eye(2)), "R has 4 values"),
    (_with(D=np.zeros(4)), "D has 4 values"),
    (_with(distortion_model="equidistant"), "unknown distortion model 'equidistant'"),
    (_with(distortion_model=""), "unknown distortion model ''"),
    (_with(P=_p(p00=1500.0, p11=1500.0)), "K and P are inconsistent"),
    (_with(P=_p(p23=0.5)), "Tz = 0"),
    (_with(K=_k(k21=3.0)), "K is not an intrinsic matrix"),
    (_with(R=np.diag([1.0, 1.0, -1.0])), "R is not a rotation"),
    (_with(R=2 * np.eye(3)), "R is not a rotation"),
    (_with(width=0), "image size 0x480"),
    (_with(width=0, height=0), "not calibrated"),
])
def test_bad_camera_info_is_rejected_with_its_reason(fields, match):
    """Through the message decoder, as a node meets it: MalformedMessageError with the reason, no crash."""
    CameraModel(**GOOD)  # the base case is valid
    msg = camera_info_msg(CameraModel(**GOOD), 0)
    msg.width, msg.height, msg.distortion_model = fields["width"], fields["height"], fields["distortion_model"]
    msg.k, msg.d, msg.r, msg.p = (np.asarray(fields[n], dtype=np.float64).reshape(-1) for n in "KDRP")
    with pytest.raises(MalformedMessageError, match=match) as info:
        camera_model_from_msg(msg)
    assert info.value.msgtype == "sensor_msgs/msg/CameraInfo"


def test_rectified_p_may_scale_k():
    """OpenCV stereoRectify with alpha scales P's focal lengths: within the factor 2 that is valid."""
    m = CameraModel(**_with(P=_p(p00=400.0, p11=400.0, p03=-40.0)))
    assert m.P[0, 0] == 400.0
