"""The ackermann_msgs stand-in in ros_ws: upstream's field layout (ros-drivers/ackermann_msgs 2.0.2, ROS 2
branch), registered in the core's typestore, and the same fields in the generated package when built."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.test_vision_msgs import parse_msg

MSG_DIR = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "ackermann_msgs" / "msg"

#: Written down from upstream's .msg files so this test fails if our copies drift from them.
UPSTREAM_FIELDS = {
    "AckermannDrive": [("float32", "steering_angle"), ("float32", "steering_angle_velocity"), ("float32", "speed"),
                       ("float32", "acceleration"), ("float32", "jerk")],
    "AckermannDriveStamped": [("std_msgs/Header", "header"), ("AckermannDrive", "drive")],
}


def test_msg_files_have_upstreams_fields_in_order():
    assert sorted(p.stem for p in MSG_DIR.glob("*.msg")) == sorted(UPSTREAM_FIELDS)
    for name, fields in UPSTREAM_FIELDS.items():
        assert parse_msg(MSG_DIR / f"{name}.msg") == fields, name


def test_typestore_builds_the_command_and_its_uncertainty():
    from perception_nodes.codecs.backend import default_backend, make_header

    b = default_backend()
    drive = b.new("ackermann_msgs/msg/AckermannDrive", steering_angle=0.1, steering_angle_velocity=0.0, speed=3.0,
                  acceleration=0.0, jerk=0.0)
    msg = b.new("ackermann_msgs/msg/AckermannDriveStamped", header=make_header(b, 5, "base_link"), drive=drive)
    assert msg.drive.speed == 3.0


def test_generated_package_has_the_same_fields():
    mod = pytest.importorskip("ackermann_msgs.msg", reason="ackermann_msgs not built (run scripts/setup.sh)")
    got = importlib.import_module("ackermann_msgs.msg").AckermannDrive.get_fields_and_field_types()
    assert list(got.items()) == [(n, t.replace("float32", "float")) for t, n in UPSTREAM_FIELDS["AckermannDrive"]]
    assert list(mod.AckermannDriveStamped.get_fields_and_field_types()) == ["header", "drive"]
