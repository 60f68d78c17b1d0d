"""``sensor_msgs/CameraInfo`` <-> :class:`CameraModel`, and projecting camera-frame points to pixels.

Nodes keep a validated :class:`CameraModel` instead of the raw message so that a bad calibration
(NaN intrinsics, a distortion vector that does not fit its model) is rejected once, when it arrives,
rather than producing NaN pixels in every frame after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from perception_nodes.codecs.backend import MessageBackend, default_backend, make_header
from perception_nodes.errors import MalformedMessageError

MSGTYPE = "sensor_msgs/msg/CameraInfo"

#: distortion model -> number of coefficients in D (OpenCV order: k1, k2, p1, p2, k3[, k4, k5, k6]).
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}


def _malformed(reason: str) -> MalformedMessageError:
    return MalformedMessageError(MSGTYPE, reason)


@dataclass(frozen=True, eq=False)
class CameraModel:
    """A pinhole camera with lens distortion, as CameraInfo describes it (arrays float64, read-only)."""

    width: int
    height: int
    frame_id: str
    distortion_model: str
    K: np.ndarray  # (3, 3) intrinsics of the raw image
    D: np.ndarray  # (5,) or (8,) distortion coefficients
    R: np.ndarray  # (3, 3) rectification rotation
    P: np.ndarray  # (3, 4) projection of the rectified image

    def __post_init__(self) -> None:
        n = DISTORTION_MODELS.get(self.distortion_model)
        if n is None:
            raise _malformed(f"unknown distortion model {self.distortion_model!r} (supported: "
                             f"{', '.join(DISTORTION_MODELS)})")
        for name, shape in (("K", (3, 3)), ("D", (n,)), ("R", (3, 3)), ("P", (3, 4))):
            arr = np.array(getattr(self, name), dtype=np.float64)
            if arr.size != int(np.prod(shape)):
                raise _malformed(f"{name} has {arr.size} values, {self.distortion_model} needs {shape}")
            if not np.isfinite(arr).all():
                raise _malformed(f"{name} has non-finite values")
            arr = arr.reshape(shape)
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        _check_geometry(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CameraModel):
            return NotImplemented
        return (self.width, self.height, self.frame_id, self.distortion_model) == (
            other.width, other.height, other.frame_id, other.distortion_model
        ) and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in "KDRP")

    __hash__ = None  # type: ignore[assignment]  # holds arrays


#: P's focal lengths may differ from K's (a rectified image is resampled, e.g. scaled to keep every
#: pixel: ``alpha`` in OpenCV's stereoRectify), but not by more than this factor either way: beyond it the
#: two matrices describe different cameras or resolutions (one of them was not updated after a resize).
MAX_K_P_SCALE = 2.0


def _check_geometry(m: CameraModel) -> None:
    """The checks that go beyond sizes and finiteness (each names what is wrong and why it matters).

    * image size: width and height >= 1 (0 x 0 is what an uncalibrated driver sends);
    * K: positive focal lengths (zero = uncalibrated; negative = a mirrored image, which no node here
      expects), K[1, 0] = K[2, 0] = K[2, 1] = 0 and K[2, 2] = 1 (an upper-triangular intrinsic matrix);
    * R: a rotation (orthonormal, determinant +1, to 1e-3): the rectification rotation of a stereo head;
    * P: its left 3x3 an intrinsic matrix as K (positive focal lengths, last row [0, 0, 1]), Tz = P[2, 3]
      = 0 (ROS: both cameras of a pair in the same image plane), and focal lengths within a factor of
      :data:`MAX_K_P_SCALE` of K's (beyond that K and P describe different cameras or resolutions).
    """
    if m.width < 1 or m.height < 1:
        raise _malformed(f"image size {m.width}x{m.height}: width and height must be >= 1 "
                         "(0x0 means the camera is not calibrated)")
    K, P, R = m.K, m.P, m.R
    for name, mat in (("K", K), ("P", P)):
        fx, fy = mat[0, 0], mat[1, 1]
        if fx == 0 or fy == 0:
            raise _malformed(f"{name} has a zero focal length (fx={fx:g}, fy={fy:g}): uncalibrated camera")
        if fx < 0 or fy < 0:
            raise _malformed(f"{name} has a negative focal length (fx={fx:g}, fy={fy:g}): a mirrored image "
                             "is not supported")
        if mat[1, 0] != 0 or mat[2, 0] != 0 or mat[2, 1] != 0 or abs(mat[2, 2] - 1.0) > 1e-9:
            raise _malformed(f"{name} is not an intrinsic matrix (its lower triangle must be 0 and "
                             f"[2, 2] = 1; got rows {mat[1, :3].tolist()}, {mat[2, :3].tolist()})")
    if abs(P[2, 3]) > 1e-9:
        raise _malformed(f"P[2, 3] = {P[2, 3]:g}: ROS CameraInfo needs Tz = 0 (both cameras of a pair in one "
                         "image plane)")
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise _malformed("R is not a rotation matrix (rectification must be orthonormal with det +1)")
    ratio = np.array([P[0, 0] / K[0, 0], P[1, 1] / K[1, 1]])
    if (ratio > MAX_K_P_SCALE).any() or (ratio < 1.0 / MAX_K_P_SCALE).any():
        raise _malformed(f"K and P are inconsistent: focal lengths K ({K[0, 0]:g}, {K[1, 1]:g}) vs P "
                         f"({P[0, 0]:g}, {P[1, 1]:g}) differ by more than a factor {MAX_K_P_SCALE:g} "
                         "(different cameras or resolutions)")


def camera_model_from_msg(msg: Any) -> CameraModel:
    """Validate a CameraInfo (either message flavour) into a :class:`CameraModel`."""
    return CameraModel(
        width=int(msg.width), height=int(msg.height), frame_id=str(msg.header.frame_id),
        distortion_model=str(msg.distortion_model), K=np.asarray(msg.k), D=np.asarray(msg.d),
        R=np.asarray(msg.r), P=np.asarray(msg.p),
    )


def camera_info_msg(model: CameraModel, stamp_ns: int, backend: MessageBackend | None = None) -> Any:
    """The CameraInfo for ``model`` (no binning, full-image ROI)."""
    backend = backend or default_backend()
    roi = backend.new("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                      do_rectify=False)
    return backend.new(
        MSGTYPE, header=make_header(backend, stamp_ns, model.frame_id), height=model.height,
        width=model.width, distortion_model=model.distortion_model, d=model.D.copy(),
        k=model.K.flatten(), r=model.R.flatten(), p=model.P.flatten(), binning_x=0, binning_y=0, roi=roi,
    )


def project(model: CameraModel, points_cam: np.ndarray) -> np.ndarray:
    """Pixels ``(N, 2)`` in the raw (distorted) image of points ``(N, 3)`` in the camera optical frame.

    Applies ``model.distortion_model`` (OpenCV's pinhole model: radial k1..k6 as a rational
    polynomial, tangential p1, p2) and then K. Points at or behind the camera (z <= 0) give NaN: the
    pinhole equations would mirror them into the image.
    """
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    z = np.where(p[:, 2] > 0, p[:, 2], np.nan)
    x, y = p[:, 0] / z, p[:, 1] / z
    k1, k2, p1, p2, k3, k4, k5, k6 = np.pad(model.D, (0, 8 - model.D.size))
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    K = model.K
    return np.stack([K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=1)


def project_rectified(model: CameraModel, points_rect: np.ndarray) -> np.ndarray:
    """Pixels ``(N, 2)`` in the rectified image of points ``(N, 3)`` in the rectified camera frame.

    Uses P (which includes a stereo baseline term for right cameras). Points with a non-positive
    homogeneous depth give NaN.
    """
    p = np.asarray(points_rect, dtype=np.float64).reshape(-1, 3)
    uvw = p @ model.P[:, :3].T + model.P[:, 3]
    w = np.where(uvw[:, 2] > 0, uvw[:, 2], np.nan)
    return uvw[:, :2] / w[:, None]
