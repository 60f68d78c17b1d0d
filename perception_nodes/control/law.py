"""The command law: curvature -> (speed, steering angle) of a kinematic bicycle, or (v, yaw rate).

``steering = atan(wheelbase * curvature)`` (the front-axle virtual wheel of ``ackermann_msgs``), clamped to
``max_steering_rad``; the speed is ``speed_mps`` (``fallback_speed_mps`` in fallback), capped so the lateral
acceleration ``v^2 |curvature|`` stays below ``max_lateral_accel_mps2`` (0 = no cap). A twist command is
``(v, v * curvature)`` with the curvature the clamped steering angle really gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandParams:
    """Vehicle and speed settings (``control`` section of the params file)."""

    wheelbase_m: float = 2.7
    speed_mps: float = 9.0
    fallback_speed_mps: float = 3.0
    max_steering_rad: float = 0.6
    max_lateral_accel_mps2: float = 3.0

    def __post_init__(self) -> None:
        if not (self.wheelbase_m > 0 and self.max_steering_rad > 0):
            raise ValueError("wheelbase_m and max_steering_rad must be > 0")
        if self.speed_mps < 0 or self.fallback_speed_mps < 0 or self.max_lateral_accel_mps2 < 0:
            raise ValueError("speeds and max_lateral_accel_mps2 must be >= 0")


@dataclass(frozen=True)
class Command:
    """One command: speed (m/s), steering angle (rad, + left), the curvature it drives (1/m) and yaw rate."""

    speed: float
    steering_angle: float
    curvature: float

    @property
    def yaw_rate(self) -> float:
        return self.speed * self.curvature


def command_for(curvature: float, speed: float, p: CommandParams) -> Command:
    """The command that follows ``curvature`` at (at most) ``speed``; a non-finite curvature drives straight."""
    k = float(curvature) if math.isfinite(curvature) else 0.0
    steer = max(-p.max_steering_rad, min(p.max_steering_rad, math.atan(p.wheelbase_m * k)))
    k_real = math.tan(steer) / p.wheelbase_m
    v = max(0.0, float(speed))
    if p.max_lateral_accel_mps2 > 0 and abs(k_real) > 0:
        v = min(v, math.sqrt(p.max_lateral_accel_mps2 / abs(k_real)))
    return Command(v, steer, k_real)
