"""Fault injection for generated scenarios: what goes wrong with the sensors, and when.

A :class:`Faults` is part of a scenario's definition: the same seed and faults give the same bag. The
faults' random draws come from their own generator (seeded from the scenario seed), so switching a
fault on does not change the clean parts of the data (LiDAR noise, image noise) of the same seed.

Time ranges are in seconds from the start of the scenario, ``(start, end)`` with ``end`` exclusive;
``end`` may be ``inf``. Azimuths are degrees in the LiDAR frame (0 = forward, counter-clockwise, as
the LiDAR's azimuth columns). Faults act on the *sensor* topics only (LiDAR cloud, camera images and
their camera_info); ground truth keeps the true data and nominal stamps, so a fault's effect can be
measured against it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from perception_nodes.scenario.lidar import BeamModel, ScanResult

CAMERAS = ("left", "right", "mono")
ALWAYS = (0.0, math.inf)


@dataclass(frozen=True)
class Faults:
    """Sensor faults to inject (all off by default). Fields, by sensor:

    LiDAR
      * ``lidar_dropout``: extra probability in [0, 1) that each return is lost (on top of the beam
        model's own ``dropout_prob``), during ``lidar_dropout_time``.
      * ``lidar_sector_deg``: ``(start, end)`` azimuth range whose returns are all lost (a blocked or
        failed part of the spin; wraps through 0 when start > end), during ``lidar_sector_time``.

    Cameras (``*_cameras`` name which of "left", "right", "mono" are hit)
      * ``camera_blackout_time``: frames in this time range are all zeros (a dead or covered camera).
      * ``glare_time``: frames in this time range get sun glare: a saturated disc of radius
        ``glare_radius`` (fraction of the image width) at ``glare_center`` (fractions of width and height)
        with a bloom around it and a horizontal streak.
      * ``stereo_decalibration_deg``: the right camera is physically rotated by this angle about the
        axis ``stereo_decalibration_axis`` ("x": pitch, rows shift by about fy * angle; "y": yaw,
        disparities shift; "z": roll) while its calibration still says rectified, from
        ``stereo_decalibration_start_s`` on.

    Timing (every sensor message, each with its own draw; ground truth is not affected)
      * ``timestamp_jitter_s``: standard deviation of Gaussian noise added to header stamps; the log
        (receive) time is not changed.
      * ``message_delay_s`` + uniform ``[0, message_delay_jitter_s)``: the log time lags the nominal
        capture time by this much (the message arrives late); the header stamp is not changed. Each
        sensor's messages still arrive in order (a late message holds back the next ones of its sensor).
    """

    lidar_dropout: float = 0.0
    lidar_dropout_time: tuple[float, float] = ALWAYS
    lidar_sector_deg: tuple[float, float] | None = None
    lidar_sector_time: tuple[float, float] = ALWAYS
    camera_blackout_time: tuple[float, float] | None = None
    camera_blackout_cameras: tuple[str, ...] = CAMERAS
    glare_time: tuple[float, float] | None = None
    glare_cameras: tuple[str, ...] = ("left", "mono")
    glare_center: tuple[float, float] = (0.72, 0.25)
    glare_radius: float = 0.06
    stereo_decalibration_deg: float = 0.0
    stereo_decalibration_axis: str = "x"
    stereo_decalibration_start_s: float = 0.0
    timestamp_jitter_s: float = 0.0
    message_delay_s: float = 0.0
    message_delay_jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lidar_dropout < 1.0:
            raise ValueError("lidar_dropout must be in [0, 1)")
        for name in ("lidar_dropout_time", "lidar_sector_time", "camera_blackout_time", "glare_time",
                     "lidar_sector_deg", "glare_center"):
            v = getattr(self, name)
            if v is None:
                continue
            v = tuple(float(x) for x in v)
            if len(v) != 2 or any(math.isnan(x) for x in v):
                raise ValueError(f"{name} needs two numbers, got {v}")
            if name.endswith("_time") and not v[0] < v[1]:
                raise ValueError(f"{name} must be (start, end) with start < end, got {v}")
            object.__setattr__(self, name, v)
        for name in ("camera_blackout_cameras", "glare_cameras"):
            v = tuple(str(x) for x in getattr(self, name))
            bad = [c for c in v if c not in CAMERAS]
            if bad:
                raise ValueError(f"{name}: unknown camera(s) {bad}; cameras are {', '.join(CAMERAS)}")
            object.__setattr__(self, name, v)
        if self.stereo_decalibration_axis not in ("x", "y", "z"):
            raise ValueError("stereo_decalibration_axis must be 'x', 'y' or 'z'")
        if not 0.0 < self.glare_radius < 1.0:
            raise ValueError("glare_radius must be in (0, 1)")
        for name in ("timestamp_jitter_s", "message_delay_s", "message_delay_jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @property
    def active(self) -> bool:
        return self != Faults()

    def to_dict(self) -> dict:
        """JSON-ready description (infinite ends as the string "inf")."""
        def clean(v):
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            if isinstance(v, float) and math.isinf(v):
                return "inf"
            return v
        return {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # -- LiDAR ---------------------------------------------------------------------------------------
    def apply_lidar(self, scan: ScanResult, t: float, beam_model: BeamModel, rng: np.random.Generator) -> ScanResult:
        """The scan with dropout and sector loss applied (returns ``scan`` itself when nothing applies)."""
        keep = np.ones(len(scan.points), dtype=bool)
        if self.lidar_dropout > 0.0 and _within(t, self.lidar_dropout_time):
            keep &= rng.random(len(scan.points)) >= self.lidar_dropout
        if self.lidar_sector_deg is not None and _within(t, self.lidar_sector_time):
            az = scan.azimuth_index * beam_model.azimuth_resolution_deg
            keep &= ~in_sector(az, self.lidar_sector_deg)
        if keep.all():
            return scan
        return dataclasses.replace(scan, points=scan.points[keep], ring=scan.ring[keep],
                                   azimuth_index=scan.azimuth_index[keep], source=scan.source[keep])

    # -- cameras -------------------------------------------------------------------------------------
    def right_misalignment(self, t: float) -> np.ndarray | None:
        """Rotation (optical frame) of the decalibrated right camera at time t, or None."""
        if self.stereo_decalibration_deg == 0.0 or t < self.stereo_decalibration_start_s:
            return None
        a = math.radians(self.stereo_decalibration_deg)
        c, s = math.cos(a), math.sin(a)
        if self.stereo_decalibration_axis == "x":
            return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        if self.stereo_decalibration_axis == "y":
            return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def apply_camera(self, name: str, rgb: np.ndarray, t: float) -> np.ndarray:
        """The image with blackout / glare applied (``rgb`` itself when nothing applies)."""
        if (self.camera_blackout_time is not None and name in self.camera_blackout_cameras
                and _within(t, self.camera_blackout_time)):
            return np.zeros_like(rgb)
        if self.glare_time is not None and name in self.glare_cameras and _within(t, self.glare_time):
            rgb = add_glare(rgb, self.glare_center, self.glare_radius)
        return rgb

    # -- timing --------------------------------------------------------------------------------------
    def stamp_and_log(self, nominal_ns: int, rng: np.random.Generator) -> tuple[int, int]:
        """(header stamp, log time) of a sensor message captured at ``nominal_ns``.

        Always draws two numbers, so the sequence of draws does not depend on which faults are on.
        """
        jitter, u = rng.standard_normal(), rng.random()
        stamp = nominal_ns + int(round(jitter * self.timestamp_jitter_s * 1e9))
        log = nominal_ns + int(round((self.message_delay_s + u * self.message_delay_jitter_s) * 1e9))
        return stamp, log


def _within(t: float, span: tuple[float, float]) -> bool:
    return span[0] <= t < span[1]


def in_sector(az_deg: np.ndarray, sector: tuple[float, float]) -> np.ndarray:
    """Mask of azimuths (deg) inside ``(start, end)``, wrapping through 0 when start > end."""
    a = np.mod(az_deg, 360.0)
    s0, s1 = sector[0] % 360.0, sector[1] % 360.0
    if s0 <= s1:
        return (a >= s0) & (a <= s1)
    return (a >= s0) | (a <= s1)


def add_glare(rgb: np.ndarray, center: tuple[float, float], radius: float) -> np.ndarray:
    """Sun glare: a saturated disc (radius ``radius`` * width), a bloom fading around it, a streak."""
    h, w = rgb.shape[:2]
    cx, cy = center[0] * (w - 1), center[1] * (h - 1)
    r = radius * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy)
    bloom = np.clip(1.0 - (d - r) / (3.0 * r), 0.0, 1.0) ** 2
    streak = np.exp(-((yy - cy) / (0.25 * r)) ** 2) * np.clip(1.0 - np.abs(xx - cx) / (0.6 * w), 0.0, 1.0)
    k = np.maximum(np.where(d <= r, 1.0, bloom), 0.8 * streak)
    out = rgb.astype(np.float32) + (255.0 * 1.2 * k)[..., None] * np.array([1.0, 0.97, 0.88], np.float32)
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def parse_faults(specs: list[str] | None) -> Faults:
    """Faults from ``KEY=VALUE`` strings (the CLI's ``--fault``): numbers, ``A:B`` for pairs (``inf`` allowed),
    comma-separated names for camera lists, e.g. ``lidar_sector_deg=60:120``, ``camera_blackout_time=2:3``,
    ``glare_cameras=left,right``, ``timestamp_jitter_s=0.005``."""
    kwargs: dict = {}
    fields = {f.name: f for f in dataclasses.fields(Faults)}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"bad fault {spec!r}: use KEY=VALUE with KEY one of {', '.join(fields)}")
        default = getattr(Faults(), key)
        try:
            if key.endswith("_cameras"):
                kwargs[key] = tuple(v.strip() for v in value.split(",") if v.strip())
            elif key == "stereo_decalibration_axis":
                kwargs[key] = value.strip()
            elif isinstance(default, tuple) or default is None:
                parts = value.split(":")
                if len(parts) != 2:
                    raise ValueError("needs A:B")
                kwargs[key] = (float(parts[0]), float(parts[1]))
            else:
                kwargs[key] = float(value)
        except ValueError as exc:
            raise ValueError(f"bad fault {spec!r}: {exc}") from None
    return Faults(**kwargs)
