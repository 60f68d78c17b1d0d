"""CameraInfo <-> CameraModel and projection, checked against hand-worked values and a scalar reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_nodes.codecs import CameraModel, camera_info_msg, camera_model_from_msg, project, project_rectified
from perception_nodes.errors import MalformedMessageError

TYPE = "sensor_msgs/msg/CameraInfo"
K = [[720.0, 0.5, 640.0], [0.0, 710.0, 360.0], [0.0, 0.0, 1.0]]


def model(D, distortion_model="plumb_bob", K=K, P=None):
    P = np.hstack([np.asarray(K), [[-380.0], [0.0], [0.0]]]) if P is None else P
    return CameraModel(width=1280, height=720, frame_id="cam", distortion_model=distortion_model, K=np.asarray(K),
                       D=np.asarray(D, float), R=np.eye(3), P=np.asarray(P))


def reference_pixel(K, D, X, Y, Z):
    """OpenCV's projectPoints written out term by term for one point (no vectorisation, no Horner)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = list(D) + [0.0] * (8 - len(D))
    x, y = X / Z, Y / Z
    r2 = x**2 + y**2
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x**2)
    yd = y * radial + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y
    return K[0][0] * xd + K[0][1] * yd + K[0][2], K[1][1] * yd + K[1][2]


@pytest.mark.parametrize(
    "D,distortion_model,point,pixel",
    [
        ([0.1, 0, 0, 0, 0], "plumb_bob", (1, 0, 1), (110, 0)),  # r2=1: radial 1.1
        ([0, 0, 0.01, 0.02, 0], "plumb_bob", (1, 1, 1), (110, 108)),  # tangential only
        ([0, 0.1, 0, 0, 0.1], "plumb_bob", (2, 0, 2), (120, 0)),  # k2, k3 at r2=1
        ([0.1, 0, 0, 0, 0, 0.1, 0, 0], "rational_polynomial", (1, 0, 1), (100, 0)),  # 1.1 / 1.1
        ([0, 0, 0, 0, 0, 0, 0, 1], "rational_polynomial", (0, 2, 2), (0, 50)),  # k6: 1 / (1 + 1)
    ],
)
def test_hand_worked_values(D, distortion_model, point, pixel):
    m = model(D, distortion_model, K=[[100, 0, 0], [0, 100, 0], [0, 0, 1]])
    assert np.allclose(project(m, np.array([point], float)), [pixel], atol=1e-12)


coeffs = st.floats(-0.3, 0.3)


@settings(max_examples=200, deadline=None)
@given(
    D=st.one_of(st.lists(coeffs, min_size=5, max_size=5), st.lists(coeffs, min_size=8, max_size=8)),
    points=st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(0.5, 80)), min_size=1, max_size=20),
)
def test_matches_scalar_reference(D, points):
    m = model(D, "plumb_bob" if len(D) == 5 else "rational_polynomial")
    want = [reference_pixel(K, D, *p) for p in points]
    assert np.allclose(project(m, np.array(points)), want, rtol=1e-9, atol=1e-6)


def test_models_agree_when_extra_rational_terms_are_zero():
    pts = np.random.default_rng(0).uniform([-3, -3, 1], [3, 3, 30], (100, 3))
    d = [-0.2, 0.05, 0.001, -0.002, 0.01]
    assert np.allclose(project(model(d), pts), project(model([*d, 0, 0, 0], "rational_polynomial"), pts))
    assert np.allclose(project(model([0] * 5), pts)[:, 1], 710 * pts[:, 1] / pts[:, 2] + 360)


def test_points_behind_the_camera_are_nan():
    pts = np.array([[1.0, 1.0, -2.0], [0.0, 0.0, 0.0], [0.1, 0.2, 3.0]])
    for uv in (project(model([0.1, 0, 0, 0, 0]), pts), project_rectified(model([0] * 5), pts)):
        assert np.isnan(uv[:2]).all() and np.isfinite(uv[2]).all()


def test_project_rectified_uses_p_with_baseline():
    m = model([0.3, 0, 0, 0, 0])  # distortion must not matter for rectified pixels
    pts = np.array([[1.0, 0.5, 10.0], [-2.0, 1.0, 4.0]])
    want = np.column_stack([(720 * pts[:, 0] + 0.5 * pts[:, 1] - 380) / pts[:, 2] + 640,
                            710 * pts[:, 1] / pts[:, 2] + 360])
    assert np.allclose(project_rectified(m, pts), want)


@pytest.mark.parametrize("D,distortion_model", [
    ([0.1, -0.2, 0.001, 0.002, 0.03], "plumb_bob"),
    ([0.1, -0.2, 0.001, 0.002, 0.03, 0.4, 0.5, 0.6], "rational_polynomial"),
])
def test_message_round_trip(D, distortion_model, cdr_roundtrip):
    m = model(D, distortion_model)
    msg = cdr_roundtrip(camera_info_msg(m, 42, None), TYPE)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 42 and list(msg.d) == D
    back = camera_model_from_msg(msg)
    assert back == m and back != model([0] * 5)
    assert not back.K.flags.writeable and back.P.shape == (3, 4)


@pytest.mark.parametrize(
    "change",
    [
        {"K": np.where(np.eye(3) == 1, np.nan, 0.0)},
        {"K": np.array(K)[:2]},
        {"P": np.full((3, 4), np.inf)},
        {"D": np.zeros(4)},
        {"D": np.zeros(8)},  # plumb_bob has five
        {"distortion_model": "rational_polynomial"},  # with five coefficients
        {"distortion_model": "equidistant"},
        {"distortion_model": ""},
        {"K": np.zeros((3, 3))},  # uncalibrated
    ],
)
def test_invalid_models_raise(change):
    fields = dict(width=1280, height=720, frame_id="cam", distortion_model="plumb_bob", K=np.array(K),
                  D=np.zeros(5), R=np.eye(3), P=np.zeros((3, 4)))
    with pytest.raises(MalformedMessageError) as info:
        CameraModel(**{**fields, **change})
    assert info.value.msgtype == TYPE


def test_invalid_message_raises():
    msg = camera_info_msg(model([0] * 5), 0)
    msg.d = np.zeros(3)
    with pytest.raises(MalformedMessageError, match="D has 3 values"):
        camera_model_from_msg(msg)
    msg.d, msg.k = np.zeros(5), np.full(9, math.nan)
    with pytest.raises(MalformedMessageError, match="non-finite"):
        camera_model_from_msg(msg)
