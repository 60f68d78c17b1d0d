"""The robustness study's conditions, and what each fault affects, from the generator's parameters only.

A *condition* is a name plus ``--fault KEY=VALUE`` specs of ``perception-stack generate``
(:data:`CONDITIONS`; times are seconds from the first frame). After generation, the faults are read
back from the bag's ``/scenario/info`` (the generator's own record, :func:`fault_windows`), so the
windows the study scores are those the generator applied, not those this module meant to ask for.

What a fault *affects* (the positives of the AUROCs, the ``affected`` scoring region):

* frames: those whose nominal time lies in the fault's window (every frame for timing faults and for
  a decalibration that never ends, from its start on);
* cells: for LiDAR faults the generator's ``/ground_truth/occupancy/lidar_fault`` grid of the frame
  (every cell under dropout, the lost sector's cells under sector loss); for camera faults the
  horizontal field of view of the cameras hit (:func:`camera_view_mask`, from each camera's position,
  ``fx`` and width in ``/scenario/info``; the cameras look along base_link +x); for timing faults all
  cells. Never derived from the outputs scored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = [
    "CONDITIONS",
    "Condition",
    "FaultWindow",
    "camera_view_mask",
    "fault_windows",
    "training_seeds",
]


@dataclass(frozen=True)
class Condition:
    """One run of the study: a name, the generator's fault specs and the sensor the fault hits."""

    name: str
    faults: tuple[str, ...] = ()
    sensor: str = ""  # "lidar", "camera", "timing" or "" (clean)
    description: str = ""


def _window(t0: float, t1: float) -> str:
    return f"{t0:g}:{t1:g}"


def conditions(t0: float, t1: float) -> dict[str, Condition]:
    """The study's conditions with the fault window ``(t0, t1)`` seconds from the first frame."""
    w = _window(t0, t1)
    c = [
        Condition("clean", (), "", "no fault"),
        Condition("lidar_dropout", ("lidar_dropout=0.8", f"lidar_dropout_time={w}"), "lidar",
                  "80 % of the LiDAR returns lost"),
        Condition("lidar_sector", ("lidar_sector_deg=-60:60", f"lidar_sector_time={w}"), "lidar",
                  "LiDAR returns in -60..60 deg (ahead) lost"),
        Condition("lidar_blackout", ("lidar_sector_deg=-180:179.9", f"lidar_sector_time={w}"), "lidar",
                  "every LiDAR return lost (sector loss of the whole spin)"),
        Condition("camera_blackout", (f"camera_blackout_time={w}",), "camera", "all three cameras black"),
        Condition("glare", (f"glare_time={w}",), "camera", "sun glare on the left and mono cameras"),
        Condition("stereo_decalibration", ("stereo_decalibration_deg=1.0", "stereo_decalibration_axis=x",
                                           f"stereo_decalibration_start_s={t0:g}"), "camera",
                  "right camera pitched by 1 deg (never repaired)"),
        Condition("message_delay", ("message_delay_s=0.1", "message_delay_jitter_s=0.1"), "timing",
                  "every sensor message arrives 0.1-0.2 s late (whole bag)"),
        Condition("timestamp_jitter", ("timestamp_jitter_s=0.01",), "timing",
                  "sensor header stamps with 10 ms Gaussian jitter (whole bag)"),
    ]
    return {x.name: x for x in c}


#: the default conditions (fault window 1.5..3.0 s of a 5 s bag)
CONDITIONS = conditions(1.5, 3.0)


@dataclass(frozen=True)
class FaultWindow:
    """Where and when a bag's faults act: ``window`` (s from the first frame, end may be inf) and
    ``sensor`` ("lidar", "camera", "timing"; "" = no fault), the cameras hit for camera faults."""

    window: tuple[float, float] | None
    sensor: str
    cameras: tuple[str, ...] = ()
    kinds: tuple[str, ...] = field(default=())

    def contains(self, t_s: float) -> bool:
        return self.window is not None and self.window[0] <= t_s < self.window[1]


def _pair(v: Any) -> tuple[float, float]:
    return tuple(math.inf if x == "inf" else float(x) for x in v)  # type: ignore[return-value]


def fault_windows(faults: dict[str, Any]) -> FaultWindow:
    """The faults of a ``/scenario/info`` record (``Faults.to_dict()``) as one window.

    One kind of fault per bag is what the study generates; several are merged (the union's span, the
    first sensor named). A fault switched off keeps its default and is ignored.
    """
    spans: list[tuple[float, float]] = []
    kinds: list[str] = []
    sensor = ""
    cameras: set[str] = set()
    if float(faults.get("lidar_dropout", 0.0)) > 0.0:
        spans.append(_pair(faults["lidar_dropout_time"]))
        kinds.append("lidar_dropout")
        sensor = sensor or "lidar"
    if faults.get("lidar_sector_deg") is not None:
        spans.append(_pair(faults["lidar_sector_time"]))
        kinds.append("lidar_sector")
        sensor = sensor or "lidar"
    if faults.get("camera_blackout_time") is not None:
        spans.append(_pair(faults["camera_blackout_time"]))
        kinds.append("camera_blackout")
        cameras.update(faults.get("camera_blackout_cameras") or ())
        sensor = sensor or "camera"
    if faults.get("glare_time") is not None:
        spans.append(_pair(faults["glare_time"]))
        kinds.append("glare")
        cameras.update(faults.get("glare_cameras") or ())
        sensor = sensor or "camera"
    if float(faults.get("stereo_decalibration_deg", 0.0)) != 0.0:
        spans.append((float(faults.get("stereo_decalibration_start_s", 0.0)), math.inf))
        kinds.append("stereo_decalibration")
        cameras.update(("left", "right"))  # the pair's view: the stereo grid is built in the left camera
        sensor = sensor or "camera"
    if any(float(faults.get(k, 0.0)) > 0.0 for k in ("timestamp_jitter_s", "message_delay_s", "message_delay_jitter_s")):
        spans.append((0.0, math.inf))
        kinds.append("timing")
        sensor = sensor or "timing"
    if not spans:
        return FaultWindow(None, "")
    return FaultWindow((min(s[0] for s in spans), max(s[1] for s in spans)), sensor,
                       tuple(sorted(cameras)), tuple(kinds))


def camera_view_mask(camera: dict[str, Any], shape: tuple[int, int], origin: tuple[float, float],
                     resolution: float, max_range_m: float = math.inf) -> np.ndarray:
    """Cells of a base_link grid whose centre lies in a forward camera's horizontal field of view.

    ``camera``: the ``/scenario/info`` entry (``position_base_link``, ``fx``, ``width``); the optical axis
    is base_link +x (the generator's rig). ``shape`` = (rows, cols), row = y, col = x.
    """
    px, py = float(camera["position_base_link"][0]), float(camera["position_base_link"][1])
    half = math.atan2(float(camera["width"]) / 2.0, float(camera["fx"]))
    rows, cols = shape
    x = origin[0] + (np.arange(cols) + 0.5) * resolution - px
    y = origin[1] + (np.arange(rows) + 0.5) * resolution - py
    X, Y = np.meshgrid(x, y)
    return (X > 0) & (np.abs(np.arctan2(Y, X)) <= half) & (np.hypot(X, Y) <= max_range_m)


_SEED = re.compile(r"\bseed:\s*(\d+)")


def training_seeds(config_dir: str | Path) -> set[int]:
    """Every ``seed:`` value in the YAML files of ``config_dir`` (the training configs: their data seeds,
    and the trainer's own seed 0, which is also the demo scenario's seed); the report ``sets`` of the files in
    :data:`perception_nodes.eval.scored_only.SCORED_ONLY` excepted (scored there, never fitted)."""
    from perception_nodes.eval.scored_only import SCORED_ONLY, checked_part

    out: set[int] = set()
    for p in sorted(Path(config_dir).glob("*.y*ml")):
        text = p.read_text() if p.name not in SCORED_ONLY else yaml.safe_dump(checked_part(p))
        out.update(int(m.group(1)) for m in _SEED.finditer(text))
    return out
