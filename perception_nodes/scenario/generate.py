"""The scenario generator: a named procedural scenario rendered into a rosbag2 MCAP bag with ground truth.

``perception-stack generate --scenario NAME --seed S --out BAG`` (:func:`generate_main`), or
:func:`generate_bag` from Python. Same (scenario, seed, options) => the same messages, byte for byte.

Sensors (10 Hz, nominal stamps ``START_NS + k * 100 ms``; faults may jitter stamps and delay log times):

* ``/sensing/lidar/points``: sensor_msgs/PointCloud2 (x, y, z, intensity), frame ``velodyne``.
* ``/sensing/camera/{left,right,mono}/image_rect``: sensor_msgs/Image rgb8, frame ``camera_{side}_optical``.
* ``/sensing/camera/{left,right,mono}/camera_info``: rectified CameraInfo (the right one's P[0, 3] is
  -fx * B, ROS's stereo convention).
* ``/tf_static`` (once): base_link -> velodyne (from the rig YAML) and base_link -> each camera.

Ground truth (nominal stamps, never faulted):

* ``/ground_truth/objects`` (+ ``/ground_truth/markers``): Detection3DArray of the Car, Pedestrian,
  Cyclist and Pole boxes in base_link (plus Van, Truck and Bus when the ``vehicle_kinds`` realism knob
  adds them; see :mod:`perception_nodes.scenario.realism`). Each box's ``occlusion`` is its KITTI occlusion
  state (0 fully visible, 1 partly, 2 largely, 3 no ray reaches it), measured on the fault-free cast below
  (:func:`perception_nodes.eval.generated_difficulty.occlusion_truth`), so evaluation levels never depend on
  the delivered scan's dropout or faults.
* ``/ground_truth/occupancy``, ``/ground_truth/occupancy/visibility`` (from a fault-free, noise-free ray
  cast of the rig's LiDAR, not from the delivered scan) and ``/ground_truth/occupancy/lidar_fault``
  (where an injected LiDAR fault acts in that frame): nav_msgs/OccupancyGrid, 100 / 0, base_link, the
  occupancy node's grid.
* ``/ground_truth/camera/left/depth`` (32FC1 metres along the optical axis, +inf for sky) and
  ``/ground_truth/camera/left/disparity`` (32FC1 pixels, fx * B / depth, 0 for sky), frame
  ``camera_left_optical``.
* ``/ground_truth/odometry``: nav_msgs/Odometry of base_link in ``map`` (twist in base_link: speed and
  yaw rate = speed * curvature); ``/tf``: map -> base_link.
* ``/ground_truth/curvature``: perception_interfaces/Float64Stamped, the control target: curvature
  (1/m, + = left) of the ego's lane centre at the ego; ``/ground_truth/path``: nav_msgs/Path, the lane
  centre 0..30 m ahead every 1 m, base_link.
* ``/scenario/info`` (once): std_msgs/String, JSON: scenario, seed, sensors, grid, faults, versions.

The grids are the occupancy node's default geometry (80 m x 80 m at 0.25 m around base_link), see
:mod:`perception_nodes.scenario.truth`. Faults: :mod:`perception_nodes.scenario.faults`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Version of the generator's output; part of /scenario/info and of the default scenario's cache key.
#: 5: ground-truth objects carry their KITTI occlusion state, measured on the fault-free cast (before: -1).
GENERATOR_VERSION = 5
START_NS = 1_700_000_000 * 1_000_000_000
PERIOD_NS = 100_000_000
LIDAR_FRAME = "velodyne"
BASE_FRAME = "base_link"
MAP_FRAME = "map"

# -- topics: one definition, in perception_nodes.topics ---------------------------------------------------
from perception_nodes.topics import (  # noqa: E402
    CAMERA_IMAGE,
    CAMERA_INFO,
    CAMERA_INFO_TYPE,
    DETECTIONS,
    FLOAT64_STAMPED,
    GT_CURVATURE,
    GT_DEPTH,
    GT_FAULT_REGION,
    GT_DISPARITY,
    GT_MARKERS,
    GT_OBJECTS,
    GT_OCCUPANCY,
    GT_ODOMETRY,
    GT_PATH,
    GT_VISIBILITY,
    IMAGE,
    LIDAR_POINTS,
    MARKER_ARRAY,
    OCCUPANCY_GRID_TYPE,
    ODOMETRY_TYPE,
    PATH_TYPE,
    POINTCLOUD2,
    SCENARIO_INFO,
    STRING_TYPE,
    TF,
    TF_MESSAGE,
    TF_STATIC,
)

#: Topic -> message type of everything the generator writes (camera topics for each of CAMERA_SIDES).
CAMERA_SIDES = ("left", "right", "mono")
TOPIC_TYPES: dict[str, str] = {
    SCENARIO_INFO: STRING_TYPE,
    TF_STATIC: TF_MESSAGE,
    LIDAR_POINTS: POINTCLOUD2,
    **{CAMERA_IMAGE.format(side=s): IMAGE for s in CAMERA_SIDES},
    **{CAMERA_INFO.format(side=s): CAMERA_INFO_TYPE for s in CAMERA_SIDES},
    GT_OBJECTS: DETECTIONS,
    GT_MARKERS: MARKER_ARRAY,
    GT_OCCUPANCY: OCCUPANCY_GRID_TYPE,
    GT_VISIBILITY: OCCUPANCY_GRID_TYPE,
    GT_FAULT_REGION: OCCUPANCY_GRID_TYPE,
    GT_DEPTH: IMAGE,
    GT_DISPARITY: IMAGE,
    GT_ODOMETRY: ODOMETRY_TYPE,
    TF: TF_MESSAGE,
    GT_CURVATURE: FLOAT64_STAMPED,
    GT_PATH: PATH_TYPE,
}
#: Topics that exist only with cameras on.
CAMERA_TOPICS = frozenset(
    [CAMERA_IMAGE.format(side=s) for s in CAMERA_SIDES] + [CAMERA_INFO.format(side=s) for s in CAMERA_SIDES]
    + [GT_DEPTH, GT_DISPARITY]
)

LIDAR_MODELS = ("hdl64", "vlp32", "vlp16", "hdl32e")
DEFAULT_RESOLUTION = (640, 192)
# independent random streams per purpose, so that e.g. switching a fault on leaves the LiDAR noise as it was
_STREAM_LIDAR, _STREAM_CAMERA, _STREAM_FAULTS, _STREAM_TIMING = 1, 2, 3, 4
#: ground-truth labels published on /ground_truth/objects (the extra vehicle kinds exist only with realism)
GT_OBJECT_LABELS = ("Car", "Pedestrian", "Cyclist", "Pole", "Van", "Truck", "Bus")


def _q_yaw(backend, yaw: float):
    return backend.new("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def _pose(backend, x: float, y: float, z: float, yaw: float):
    return backend.new("geometry_msgs/msg/Pose",
                       position=backend.new("geometry_msgs/msg/Point", x=float(x), y=float(y), z=float(z)),
                       orientation=_q_yaw(backend, yaw))


def _vec(backend, x: float, y: float, z: float):
    return backend.new("geometry_msgs/msg/Vector3", x=float(x), y=float(y), z=float(z))


def odometry_msg(pose4, speed: float, yaw_rate: float, stamp_ns: int, backend) -> Any:
    """``nav_msgs/Odometry`` of base_link in map: pose (x, y, z, yaw), twist in base_link (v, 0, 0; 0, 0, w)."""
    import numpy as np

    from perception_nodes.codecs.backend import make_header

    x, y, z, yaw = pose4
    return backend.new(
        ODOMETRY_TYPE, header=make_header(backend, stamp_ns, MAP_FRAME), child_frame_id=BASE_FRAME,
        pose=backend.new("geometry_msgs/msg/PoseWithCovariance", pose=_pose(backend, x, y, z, yaw),
                         covariance=np.zeros(36)),
        twist=backend.new("geometry_msgs/msg/TwistWithCovariance",
                          twist=backend.new("geometry_msgs/msg/Twist", linear=_vec(backend, speed, 0.0, 0.0),
                                            angular=_vec(backend, 0.0, 0.0, yaw_rate)),
                          covariance=np.zeros(36)),
    )


def float64_stamped_msg(value: float, stamp_ns: int, frame_id: str, backend) -> Any:
    from perception_nodes.codecs.backend import make_header

    return backend.new(FLOAT64_STAMPED, header=make_header(backend, stamp_ns, frame_id), data=float(value))


def path_msg(poses, stamp_ns: int, frame_id: str, backend) -> Any:
    """``nav_msgs/Path`` from (N, 3) (x, y, yaw) poses on the ground plane."""
    from perception_nodes.codecs.backend import make_header

    header = make_header(backend, stamp_ns, frame_id)
    items = [backend.new("geometry_msgs/msg/PoseStamped", header=header, pose=_pose(backend, x, y, 0.0, yaw))
             for x, y, yaw in poses]
    return backend.new(PATH_TYPE, header=header, poses=items)


def string_msg(text: str, backend) -> Any:
    return backend.new(STRING_TYPE, data=text)


def lidar_model(name: str):
    """The beam model preset ``name`` (hdl64, vlp32, vlp16, hdl32e)."""
    from perception_nodes.scenario.lidar import BeamModel

    if name not in LIDAR_MODELS:
        raise ValueError(f"unknown lidar {name!r}; choose one of: {', '.join(LIDAR_MODELS)}")
    return getattr(BeamModel, name)()


@dataclass
class _Queue:
    """Messages waiting to be written in log-time order (a message may be logged after later captures)."""

    heap: list = field(default_factory=list)
    seq: int = 0

    def push(self, log_ns: int, topic: str, msgtype: str, msg: Any) -> None:
        heapq.heappush(self.heap, (int(log_ns), self.seq, topic, msgtype, msg))
        self.seq += 1

    def flush(self, bag, before_ns: float) -> None:
        while self.heap and self.heap[0][0] < before_ns:
            log_ns, _, topic, msgtype, msg = heapq.heappop(self.heap)
            bag.write(topic, msgtype, log_ns, msg)


def generate_bag(
    out: str | Path,
    *,
    scenario: str = "urban_street",
    seed: int = 0,
    duration_s: float = 10.0,
    start_s: float = 0.0,
    lidar: str = "hdl64",
    camera_resolution: tuple[int, int] = DEFAULT_RESOLUTION,
    cameras: bool = True,
    faults=None,
    progress: bool = True,
    rig: str | Path = "kitti_hdl64.yaml",
    timings: dict[str, float] | None = None,
    realism=None,
) -> Path:
    """Render ``scenario`` (a name of :data:`~perception_nodes.scenario.scenarios.SCENARIOS`) for
    ``duration_s`` at 10 Hz into a new rosbag2 MCAP bag folder ``out`` (must not exist); see the module
    doc for the topics. ``start_s``: scenario time of the first frame (skip into the scenario; stamps
    still start at ``START_NS``, and fault times count from the first frame). ``lidar``: "hdl64" (KITTI), "vlp32" or "vlp16"; ``camera_resolution``: (width,
    height) of all three cameras; ``cameras=False`` skips the cameras and their ground truth;
    ``faults``: a :class:`~perception_nodes.scenario.faults.Faults`. ``timings``, when given, receives
    the total seconds spent per stage (scene, lidar, cameras, truth, write). ``realism``: ``None`` /
    ``"none"`` (default: the plain simulator, bit-identical to earlier versions), a preset such as
    ``"kitti"``, ``"nuscenes"`` or ``"kitti:-vegetation"``, a mapping, or a
    :class:`~perception_nodes.scenario.realism.Realism` (see that module). With realism on, the scene
    gets its scene-level knobs, ``/tf_static`` carries the drawn sensor mount, /scenario/info a
    ``realism`` entry, and the ground truth stays in base_link / map.
    """
    import numpy as np
    from tqdm import tqdm

    from perception_nodes.bags.writer import BagWriter
    from perception_nodes.calibration import StaticTransform, load_rig, make_transform, tf_message
    from perception_nodes.codecs.backend import default_backend
    from perception_nodes.codecs.camera_info import camera_info_msg
    from perception_nodes.codecs.detections import detections_msg
    from perception_nodes.codecs.image import numpy_to_image
    from perception_nodes.codecs.outputs import marker_array_msg, occupancy_grid_msg
    from perception_nodes.codecs.pointcloud2 import create_xyzi_cloud
    from perception_nodes.eval.generated_difficulty import occlusion_truth
    from perception_nodes.pipeline.occupancy import GridSpec
    from perception_nodes.scenario.camera import camera_rig, disparity_from_depth, render_camera
    from perception_nodes.scenario.faults import Faults
    from perception_nodes.scenario.lidar import cast_scan
    from perception_nodes.scenario.scenarios import make_scene
    from perception_nodes.scenario.scene import OBJECT_LABELS, POLE, actors_at, boxes_in_base_link, ego_pose3d
    from perception_nodes.scenario.truth import fault_region, ideal_scan, occupancy_truth, path_ahead, visibility_truth

    faults = faults if faults is not None else Faults()
    if not duration_s > 0:
        raise ValueError("duration_s must be positive")
    width, height = (int(v) for v in camera_resolution)
    if cameras and (width < 16 or height < 16):
        raise ValueError(f"camera resolution {width}x{height} is too small (16x16 at least)")
    clock = {k: 0.0 for k in ("scene", "lidar", "cameras", "truth", "write")}
    tic = time.perf_counter()
    from perception_nodes.scenario.realism import Realism, RealismState, apply_scene_realism, realism_beams

    real = Realism.parse(realism)
    scene = make_scene(scenario, seed)
    beams = lidar_model(lidar)
    static = load_rig(rig)
    cams = camera_rig(width, height) if cameras else {}
    for cam in cams.values():
        static.add(cam.transform())
    models = {name: cam.model() for name, cam in cams.items()}
    spec = GridSpec()
    backend = default_backend()
    rng_lidar = np.random.default_rng([seed, _STREAM_LIDAR])
    rng_cam = {name: np.random.default_rng([seed, _STREAM_CAMERA, k]) for k, name in enumerate(CAMERA_SIDES)}
    rng_fault = np.random.default_rng([seed, _STREAM_FAULTS])
    rng_time = np.random.default_rng([seed, _STREAM_TIMING])
    n = max(1, int(round(duration_s * 1e9 / PERIOD_NS)))
    lidar_tf = static.lookup(BASE_FRAME, LIDAR_FRAME)
    if not np.allclose(lidar_tf[:3, :3], np.eye(3)) or not np.allclose(lidar_tf[:2, 3], 0.0):
        raise ValueError(f"rig {rig}: the simulated LiDAR needs {LIDAR_FRAME} above base_link with parallel axes")
    mount = float(lidar_tf[2, 3])
    state = None
    if real.active:
        scene = apply_scene_realism(scene, real, seed)
        beams = realism_beams(beams, real)
        state = RealismState.create(real, beams, seed, mount_height=mount)
        mount = state.mount_height
        static.add(StaticTransform(BASE_FRAME, LIDAR_FRAME, state.mount_transform()))

    info = {
        "scenario": scenario, "seed": int(seed), "duration_s": n * PERIOD_NS / 1e9, "start_s": float(start_s),
        "frames": n,
        "rate_hz": 1e9 / PERIOD_NS, "start_ns": START_NS, "generator_version": GENERATOR_VERSION,
        "package_version": _package_version(),
        "lidar": {"model": beams.name, "frame_id": LIDAR_FRAME, "beams": beams.n_beams,
                  "azimuths": beams.n_azimuth, "elevations_deg": list(beams.elevations_deg),
                  "max_range_m": beams.max_range, "mount_height_m": mount},
        "cameras": {name: {"frame_id": c.frame_id, "width": c.width, "height": c.height, "fx": c.fx, "fy": c.fy,
                           "cx": c.cx, "cy": c.cy, "position_base_link": list(c.position),
                           "baseline_m": c.baseline} for name, c in cams.items()},
        "grid": {"resolution": spec.resolution, "width": spec.width, "height": spec.height,
                 "origin": list(spec.origin), "frame_id": BASE_FRAME},
        "ego": {"speed_mps": scene.ego.speed, "size": list(scene.ego.size)},
        "actors": len(scene.actors),
        "faults": faults.to_dict(),
        **({"realism": state.describe()} if state is not None else {}),
        "topics": {t: ty for t, ty in TOPIC_TYPES.items() if cameras or t not in CAMERA_TOPICS},
    }
    clock["scene"] += time.perf_counter() - tic

    last_log: dict[str, int] = {}

    def timing(sensor: str, nominal_ns: int) -> tuple[int, int]:
        """(stamp, log time) of a sensor message; a sensor's messages arrive in order (FIFO), so a
        delayed message holds back the ones behind it."""
        stamp, log = faults.stamp_and_log(nominal_ns, rng_time)
        log = last_log[sensor] = max(log, last_log.get(sensor, log))
        return stamp, log

    out = Path(out)
    queue = _Queue()
    with BagWriter(out) as bag:
        bag.write(SCENARIO_INFO, STRING_TYPE, START_NS, string_msg(json.dumps(info, sort_keys=True), backend))
        bag.write(TF_STATIC, TF_MESSAGE, START_NS, tf_message(static.as_list(), START_NS, backend))
        for i in tqdm(range(n), desc=f"generate {scenario}", unit="frame", disable=not progress):
            t_rel = i * PERIOD_NS / 1e9  # faults' clock
            t = start_s + t_rel  # scene clock
            nominal = START_NS + i * PERIOD_NS

            tic = time.perf_counter()
            boxes = actors_at(scene, t)
            pose = ego_pose3d(t, scene)
            scan = cast_scan(scene, t, beams, rng_lidar, mount_height=mount, boxes=boxes, realism=state)
            clock["lidar"] += time.perf_counter() - tic
            tic = time.perf_counter()
            # visibility truth comes from a fault-free cast of the same rig, never from the delivered scan
            ideal = ideal_scan(scene, t, beams, mount_height=mount, boxes=boxes, realism=state)
            visible = visibility_truth(ideal, beams, spec)
            clock["truth"] += time.perf_counter() - tic
            tic = time.perf_counter()
            scan = faults.apply_lidar(scan, t_rel, beams, rng_fault)
            stamp, log = timing("lidar", nominal)
            queue.push(log, LIDAR_POINTS, POINTCLOUD2, create_xyzi_cloud(scan.points, stamp, LIDAR_FRAME, backend))
            clock["lidar"] += time.perf_counter() - tic

            tic = time.perf_counter()
            for name, cam in cams.items():
                mis = faults.right_misalignment(t_rel) if name == "right" else None
                frame = render_camera(scene, t, cam, rng_cam[name], boxes=boxes, misalignment=mis)
                rgb = faults.apply_camera(name, frame.rgb, t_rel)
                stamp, log = timing(name, nominal)
                queue.push(log, CAMERA_IMAGE.format(side=name), IMAGE, numpy_to_image(rgb, "rgb8", stamp, cam.frame_id, backend))
                queue.push(log, CAMERA_INFO.format(side=name), CAMERA_INFO_TYPE, camera_info_msg(models[name], stamp, backend))
                if name == "left":
                    depth = frame.depth
                    disp = disparity_from_depth(depth, cam.fx, cams["right"].baseline)
                    queue.push(nominal, GT_DEPTH, IMAGE, numpy_to_image(depth, "32FC1", nominal, cam.frame_id, backend))
                    queue.push(nominal, GT_DISPARITY, IMAGE, numpy_to_image(disp, "32FC1", nominal, cam.frame_id, backend))
            clock["cameras"] += time.perf_counter() - tic

            tic = time.perf_counter()
            base_boxes = boxes_in_base_link(boxes, pose)
            # each object's KITTI occlusion state from the same fault-free cast (points levelled at the sensor,
            # which stands at (0, 0, mount) in base_link)
            objects = occlusion_truth([b for b in base_boxes if b.label in GT_OBJECT_LABELS],
                                      ideal.points[:, :3].astype(np.float64) + (0.0, 0.0, mount), (0.0, 0.0, mount))
            # the grids go first: a consumer that scores a frame once its objects arrive then has them
            grid_origin = (spec.origin[0], spec.origin[1], 0.0)
            queue.push(nominal, GT_OCCUPANCY, OCCUPANCY_GRID_TYPE,
                       occupancy_grid_msg(occupancy_truth(base_boxes, spec), spec.resolution, grid_origin, nominal,
                                          BASE_FRAME, backend))
            queue.push(nominal, GT_VISIBILITY, OCCUPANCY_GRID_TYPE,
                       occupancy_grid_msg(visible, spec.resolution, grid_origin, nominal, BASE_FRAME, backend))
            queue.push(nominal, GT_FAULT_REGION, OCCUPANCY_GRID_TYPE,
                       occupancy_grid_msg(fault_region(faults, t_rel, beams, spec), spec.resolution, grid_origin,
                                          nominal, BASE_FRAME, backend))
            queue.push(nominal, GT_OBJECTS, DETECTIONS, detections_msg(objects, nominal, BASE_FRAME, backend))
            queue.push(nominal, GT_MARKERS, MARKER_ARRAY,
                       marker_array_msg(objects, nominal, BASE_FRAME, "ground_truth", backend))
            kappa = scene.ego.curvature(t)
            queue.push(nominal, GT_ODOMETRY, ODOMETRY_TYPE,
                       odometry_msg(pose, scene.ego.speed, scene.ego.speed * kappa, nominal, backend))
            map_tf = StaticTransform(MAP_FRAME, BASE_FRAME, make_transform(
                np.array([[math.cos(pose[3]), -math.sin(pose[3]), 0.0], [math.sin(pose[3]), math.cos(pose[3]), 0.0],
                          [0.0, 0.0, 1.0]]), np.array(pose[:3])))
            queue.push(nominal, TF, TF_MESSAGE, tf_message([map_tf], nominal, backend))
            queue.push(nominal, GT_CURVATURE, FLOAT64_STAMPED, float64_stamped_msg(kappa, nominal, BASE_FRAME, backend))
            queue.push(nominal, GT_PATH, PATH_TYPE, path_msg(path_ahead(scene, t), nominal, BASE_FRAME, backend))
            clock["truth"] += time.perf_counter() - tic

            tic = time.perf_counter()
            queue.flush(bag, nominal + PERIOD_NS)  # nothing still to come is logged before the next capture
            clock["write"] += time.perf_counter() - tic
        tic = time.perf_counter()
        queue.flush(bag, math.inf)
    clock["write"] += time.perf_counter() - tic
    if timings is not None:
        timings.update(clock)
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("perception-nodes")
    except Exception:  # noqa: BLE001 - not installed (source checkout)
        return "unknown"


# --------------------------------------------------------------------------------------------------
# command line

def _resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x192, got {text!r}") from None
    if w < 16 or h < 16 or w > 4096 or h > 4096:
        raise argparse.ArgumentTypeError(f"resolution {w}x{h} out of range (16..4096)")
    return w, h


GENERATE_DESCRIPTION = (
    "Render a procedural driving scenario into a rosbag2 MCAP bag: a rotating LiDAR (/sensing/lidar/points), "
    "a rectified stereo pair and a mono camera (/sensing/camera/{left,right,mono}/image_rect + camera_info), "
    "/tf_static, and per-frame ground truth: 3D boxes (/ground_truth/objects, markers), BEV occupancy and "
    "LiDAR visibility grids (/ground_truth/occupancy[/visibility]), left depth and disparity "
    "(/ground_truth/camera/left/{depth,disparity}), ego odometry (/ground_truth/odometry, /tf), the control "
    "target (/ground_truth/curvature, /ground_truth/path) and /scenario/info (JSON). 10 Hz. The same "
    "scenario, seed and options give the same messages. Faults are injected with --fault KEY=VALUE."
)

FAULT_HELP = (
    "inject a fault (repeatable): lidar_dropout=P, lidar_dropout_time=T0:T1, lidar_sector_deg=A:B, lidar_sector_time=T0:T1, "
    "camera_blackout_time=T0:T1, camera_blackout_cameras=left,right, glare_time=T0:T1, glare_cameras=left, "
    "stereo_decalibration_deg=D, stereo_decalibration_axis=x|y|z, timestamp_jitter_s=S, message_delay_s=S, "
    "message_delay_jitter_s=S (times in s from the start, inf allowed; see perception_nodes/scenario/faults.py)"
)


def add_generate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``generate`` command's arguments to ``p`` (the CLI's sub-parser)."""
    from perception_nodes.scenario.scenarios import SCENARIOS

    p.add_argument("--scenario", default="urban_street", choices=list(SCENARIOS),
                   help="which scenario (default: urban_street, the embedded default of replay)")
    p.add_argument("--seed", type=int, default=0, help="layout and noise seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="bag folder to create (must not exist)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to record at 10 Hz (default 10)")
    p.add_argument("--start", type=float, default=0.0, metavar="S",
                   help="scenario time of the first frame (default 0; fault times count from the first frame)")
    p.add_argument("--lidar", default="hdl64", choices=list(LIDAR_MODELS),
                   help="beam model: hdl64 (KITTI, 64 beams), vlp32, vlp16, hdl32e (nuScenes) (default hdl64)")
    p.add_argument("--realism", default="none", metavar="SPEC",
                   help="sim-to-real knobs (perception_nodes/scenario/realism.py): none (default), kitti, nuscenes, "
                        "kitti:-vegetation,-ground (all but those), kitti:+intensity (only those); knobs: "
                        "range_cap, car_shape, object_dropout, object_noise, intensity, sensor_pose, ground, "
                        "vegetation, vehicle_kinds, ego_occlusion, car_sizes")
    p.add_argument("--camera-resolution", type=_resolution, default=DEFAULT_RESOLUTION, metavar="WxH",
                   help="resolution of the three cameras (default 640x192; fx scales with the width)")
    p.add_argument("--no-cameras", action="store_true", help="LiDAR and BEV ground truth only (faster, smaller)")
    p.add_argument("--fault", action="append", default=[], metavar="KEY=VALUE", help=FAULT_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def generate_main(args: argparse.Namespace) -> int:
    """The ``generate`` command: write the bag, print a one-line summary per output."""
    from perception_nodes.bags.reader import BagReader
    from perception_nodes.scenario.faults import parse_faults

    faults = parse_faults(args.fault)
    if args.out.exists():
        raise ValueError(f"{args.out} exists already; choose a new folder")
    tic = time.perf_counter()
    clock: dict[str, float] = {}
    generate_bag(args.out, scenario=args.scenario, seed=args.seed, duration_s=args.duration, start_s=args.start,
                 lidar=args.lidar, realism=args.realism,
                 camera_resolution=args.camera_resolution, cameras=not args.no_cameras, faults=faults,
                 progress=not args.quiet, timings=clock)
    wall = time.perf_counter() - tic
    with BagReader(args.out) as r:
        counts = r.message_counts
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    frames = counts.get(LIDAR_POINTS, 0)
    print(f"{args.scenario} seed {args.seed}: {frames} frames -> {args.out} ({size / 2**20:.0f} MiB) in {wall:.1f} s "
          f"(" + ", ".join(f"{k} {v:.1f} s" for k, v in clock.items()) + ")")
    print("topics: " + ", ".join(f"{t} x{c}" for t, c in sorted(counts.items())))
    if faults.active:
        print("faults: " + json.dumps({k: v for k, v in faults.to_dict().items()
                                       if getattr(faults, k) != getattr(type(faults)(), k)}))
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - the CLI wires generate_main
    p = add_generate_arguments(argparse.ArgumentParser(prog="generate", description=GENERATE_DESCRIPTION))
    return generate_main(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
