"""Static transforms, rig YAML, KITTI calib and label conversion (against the data's verified counts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_nodes.bags.kitti import read_labels, read_velodyne
from perception_nodes.calibration import (
    StaticTransform,
    StaticTransforms,
    load_kitti_calib,
    load_rig,
    make_transform,
    matrix_to_quat,
    quat_to_matrix,
    transform_points,
)
from perception_nodes.errors import CalibrationError


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        r = quat_to_matrix(q)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(r), 1.0)
        assert np.allclose(quat_to_matrix(matrix_to_quat(r)), r, atol=1e-10)


def test_lookup_composes_and_inverts():
    yaw = make_transform(quat_to_matrix((0, 0, math.sin(0.25), math.cos(0.25))), np.array([1.0, 2.0, 0.5]))
    tree = StaticTransforms([
        StaticTransform("base_link", "lidar", make_transform(np.eye(3), np.array([0, 0, 1.73]))),
        StaticTransform("lidar", "cam", yaw),
    ])
    p_cam = np.array([[1.0, 0.0, 0.0, 7.0]], dtype=np.float32)
    p_base = transform_points(tree.lookup("base_link", "cam"), p_cam)
    expect = yaw @ np.array([1.0, 0.0, 0.0, 1.0]) + np.array([0, 0, 1.73, 0])
    assert np.allclose(p_base[0, :3], expect[:3], atol=1e-5)
    assert p_base[0, 3] == 7.0  # extra columns pass through
    back = transform_points(tree.lookup("cam", "base_link"), p_base)
    assert np.allclose(back, p_cam, atol=1e-5)
    with pytest.raises(CalibrationError, match="no transform"):
        tree.lookup("base_link", "radar")


def test_rig_yaml_and_errors(tmp_path):
    rig = load_rig("kitti_hdl64.yaml")
    assert np.allclose(rig.lookup("base_link", "velodyne")[:3, 3], [0, 0, 1.73])
    bad = tmp_path / "bad.yaml"
    bad.write_text("transforms:\n  - {parent: a, child: b, translation: [1, 2]}\n")
    with pytest.raises(CalibrationError, match="3 numbers"):
        load_rig(bad)
    with pytest.raises(CalibrationError, match="not found"):
        load_rig(tmp_path / "missing.yaml")
    nan = tmp_path / "nan.yaml"
    nan.write_text("transforms:\n  - {parent: a, child: b, translation: [.nan, 0, 0]}\n")
    with pytest.raises(CalibrationError, match="non-finite"):
        load_rig(nan)


def test_kitti_calib_values(kitti_dir):
    c = load_kitti_calib(kitti_dir / "calib/000001.txt")
    assert 0.5 < c.stereo_baseline < 0.56  # KITTI colour stereo baseline is ~0.54 m
    # the LiDAR sits ~0.27 m behind and ~0.08 m above camera 0 (KITTI set-up figure)
    cam0_in_velo = np.linalg.inv(c.Tr_velo_to_cam)[:3, 3]
    assert -0.4 < cam0_in_velo[0] < -0.1 or 0.1 < cam0_in_velo[0] < 0.4


@pytest.mark.parametrize(
    "frame,expected",
    [("000000", {"Pedestrian": 376}), ("000001", {"Truck": 70, "Car": 9, "Cyclist": 18}),
     ("000002", {"Misc": 1351, "Car": 67})],
)
def test_kitti_labels_contain_the_verified_point_counts(kitti_dir, frame, expected):
    """shared/data's SOURCE.md lists how many scan points fall inside each label box."""
    calib = load_kitti_calib(kitti_dir / f"calib/{frame}.txt")
    boxes = read_labels(kitti_dir / f"label_2/{frame}.txt", calib)
    scan = read_velodyne(kitti_dir / f"velodyne/{frame}.bin")
    got = {b.label: int(b.contains(scan).sum()) for b in boxes}
    for label, n in expected.items():
        assert abs(got[label] - n) <= max(2, 0.02 * n), (label, got[label], n)
