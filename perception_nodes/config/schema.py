"""What each parameter is: type, description, allowed range, and whether changing it needs a restart.

One schema serves every path: the rclpy nodes declare their parameters with ROS descriptors built from
it (``ros2 param describe`` shows them; rclpy rejects out-of-range or wrongly typed values on
``set_parameters`` and at start), :func:`~perception_nodes.config.load_params` checks ``--config`` files
against it, and :meth:`NodeCore.reconfigure` refuses read-only keys.

* Names and defaults come from ``perception.params.yaml`` (flattened to ROS dotted names).
* Descriptions are that file's comments: the end-of-line comment of a key (with the comment lines
  indented below it), or, for the common parameters, the header table; a key without its own comment
  takes the description of the same key elsewhere in the file (``occupancy_grid``'s inline
  ``ground.*`` reuses ``ground_segmentation``'s).
* Ranges and the read-only set are the tables below: values outside a range would make the algorithm
  meaningless or crash it (e.g. ``grid.resolution <= 0``); read-only parameters are wired once at
  start (topics, QoS, frames, calibration, window sizes).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_PATH = Path(__file__).resolve().parent / "perception.params.yaml"

#: inclusive [min, max] per dotted name (fnmatch patterns); the first match wins
RANGES: tuple[tuple[str, float, float], ...] = (
    ("diagnostics_period_s", 0.01, 3600.0),
    ("max_point_range_m", 0.1, 1e6),
    ("max_out_of_range_fraction", 0.0, 1.0),
    ("stamp_max_future_s", 0.0, 1e9),
    ("stamp_max_age_s", 0.0, 1e9),
    ("input_stale_s", 0.0, 1e6),
    ("warning_hold_s", 0.0, 1e6),
    ("latency_window", 1, 1_000_000),
    ("latency_budgets_ms.*", 0.0, 1e6),
    ("ground.num_sectors", 3, 36_000),
    ("ground.max_range", 1.0, 10_000.0),
    ("ground.seed_band", 0.0, 100.0),
    ("ground.min_bin_points", 1, 1_000_000),
    ("ground.max_slope_deg", 0.0, 89.0),
    ("ground.vertical_seed_std", 0.0, 100.0),
    ("ground.step_tolerance", 0.0, 100.0),
    ("ground.max_gap", 0.0, 10_000.0),
    ("ground.lateral_window", 0, 1000),
    ("ground.lateral_tolerance", 0.0, 100.0),
    ("ground.min_lateral_support", 1, 2001),
    ("ground.ground_threshold", 0.0, 100.0),
    ("ground.origin_ground_z", -100.0, 100.0),
    ("unknown_vacuity", 0.0, 1.0),
    ("sync.queue_size", 1, 10_000),
    ("sync.max_interval_s", 0.0, 60.0),
    ("sync.obstacle_timeout_s", 0.0, 3600.0),
    ("grid.resolution", 0.01, 100.0),
    ("grid.size_x", 1.0, 10_000.0),
    ("grid.size_y", 1.0, 10_000.0),
    ("evidence.occupied_per_hit", 0.0, 1e6),
    ("evidence.free_per_ground_hit", 0.0, 1e6),
    ("evidence.free_per_ray", 0.0, 1e6),
    ("evidence.mixed_cell_free_weight", 0.0, 1.0),
    ("evidence.max_evidence", 1e-6, 1e6),
    ("evidence.obstacle_min_height", -100.0, 100.0),
    ("evidence.obstacle_max_height", -100.0, 100.0),
    ("evidence.azimuth_bins", 8, 360_000),
    ("evidence.shadow_dilation_bins", 0, 1000),
    ("evidence.min_return_range", 0.0, 1000.0),
    ("min_return_range", 0.0, 1000.0),
    ("evidence.ground_block", 0.01, 1000.0),
    ("evidence.origin_ground_z", -100.0, 100.0),
    ("keep_grids_for_report", 0, 10_000),
    ("threads", 0, 1024),
    ("max_points", 0, 100_000_000),
    ("score_threshold", 0.0, 1.0),
    ("max_detections", 1, 100_000),
    ("nms_kernel", 1, 31),
    # the LiDAR branch's box refinement (perception_nodes/pipeline/box_refine.py checks the same bounds)
    ("box_refinement.margin_m", 0.0, 2.0),
    ("box_refinement.ground_clearance_m", 0.0, 2.0),
    ("box_refinement.min_points", 2, 100_000),
    ("box_refinement.max_fit_points", 2, 100_000),
    ("box_refinement.search_deg", 0.05, 90.0),
    ("box_refinement.step_deg", 0.05, 90.0),
    ("box_refinement.closeness_floor_m", 1e-4, 1.0),
    ("box_refinement.percentile", 0.0, 49.9),
    ("box_refinement.surface_offset_m", 0.0, 2.0),
    ("box_refinement.min_extent_fraction", 0.01, 1.0),
    ("max_vacuity", 0.0, 1.0),
    ("learned_occupancy_weight", 0.0, 1.0),
    ("fusion_queue_size", 1, 1000),
    ("marker_lifetime_s", 0.0, 3600.0),
    # fusion
    ("branches.*.timeout_s", 0.0, 3600.0),
    ("branches.*.health_timeout_s", 0.0, 3600.0),
    ("branches.*.health_missing", 0.0, 1.0),
    ("branches.*.health_inputs.*.missing", 0.0, 1.0),
    # health scalars of the branch nodes (perception_nodes/pipeline/sensor_health.py)
    ("scan_health.expected_points", 0, 100_000_000),
    ("scan_health.baseline_scans", 1, 10_000),
    ("scan_health.baseline_min_ratio", 0.0, 1.0),
    ("scan_health.baseline_min_coverage", 0.0, 1.0),
    ("scan_health.azimuth_bins", 1, 3600),
    ("scan_health.min_points_per_bin", 1, 1_000_000),
    ("saturated_level", 1, 255),
    ("crushed_level", 0, 254),
    ("trust.conflict_ok", 0.0, 1.0),
    ("trust.conflict_bad", 0.0, 1.0),
    ("trust.smoothing", 0.001, 1.0),
    ("trust.floor", 0.0, 1.0),
    ("trust.min_evidence", 0.0, 1e6),
    ("trust.min_cells", 1, 100_000_000),
    ("decay_per_s", 0.0, 0.999),
    ("max_evidence", 0.001, 1e6),
    ("max_wait_s", 0.0, 60.0),
    ("match_tolerance_s", 0.0, 60.0),
    ("odometry_max_gap_s", 0.0, 60.0),
    ("weight_warn", 0.0, 1.0),
    # detection_fusion
    ("branches.*.weight_missing", 0.0, 1.0),
    ("branches.*.weight_timeout_s", 0.0, 3600.0),
    ("branches.*.weight_hold", 1, 1000),
    ("branches.*.default_strength", 1.0, 1e9),
    ("association.gate_probability", 1e-6, 0.999999),
    ("association.max_centre_distance_m", 0.01, 1000.0),
    ("association.min_class_probability", 0.0, 1.0),
    ("association.min_sigma_m", 0.0, 100.0),
    ("trust.min_boxes", 1, 100_000),
    ("memory.decay_per_s", 0.0, 0.999),
    ("memory.process_noise_m2_per_s", 0.0, 1e6),
    ("memory.max_age_s", 0.001, 3600.0),
    ("memory.yaw_noise_rad2_per_s", 0.0, 1e6),
    ("default_sigma_*", 1e-6, 1e6),
    ("unestimated_variance", 1.0, 1e12),
    # calibration_monitor
    ("check_every_n_scans", 1, 1_000_000),
    ("pool_checks", 1, 10_000),
    ("max_stamp_diff_s", 0.0, 60.0),
    ("camera_info_wait_s", 0.0, 60.0),
    ("check.min_jump_m", 0.01, 100.0),
    ("check.max_jump_m", 0.01, 1000.0),
    ("check.smooth_ratio", 0.0, 100.0),
    ("check.min_depth_m", 0.0, 1000.0),
    ("check.max_depth_m", 0.1, 10_000.0),
    ("check.step_deg", 0.01, 10.0),
    ("check.ref_depth_m", 0.1, 1000.0),
    ("check.decay_steps", 0.1, 100.0),
    ("check.blur_sigma_px", 0.0, 100.0),
    ("check.alpha", 0.0, 1.0),
    ("check.min_edge_points", 1, 10_000_000),
    ("check.ok_fraction", 0.0, 1.0),
    ("check.error_fraction", 0.0, 1.0),
    ("check.orb_features", 10, 100_000),
    ("check.ratio", 0.01, 1.0),
    ("check.min_matches", 1, 100_000),
    ("check.stereo_ok_px", 0.0, 1000.0),
    ("check.stereo_error_px", 0.0, 1000.0),
    ("check.bias_match_px", 0.0, 100.0),
    ("check.min_bias_matches", 1, 100_000),
    # stereo_occupancy (keys of its own; grid.* and unknown_vacuity above apply too)
    ("min_disparity_px", 0.0, 10_000.0),
    ("sync.inter_message_lower_bound_s", 0.0, 60.0),
    ("health.valid_ratio_*", 0.0, 1.0),
    ("health.min_image_std", 0.0, 255.0),
    ("pair_check.intrinsics_tol", 0.0, 1.0),
    ("pair_check.max_vertical_offset", 0.0, 10.0),
    ("sgbm.num_disparities", 0, 4096),
    ("sgbm.max_disparity_fraction", 1e-3, 1.0),
    ("sgbm.min_disparity", -4096, 4096),
    ("sgbm.block_size", 1, 51),
    ("sgbm.p1", 0, 1_000_000),
    ("sgbm.p2", 0, 10_000_000),
    ("sgbm.uniqueness_ratio", 0, 100),
    ("sgbm.speckle_window_size", 0, 1_000_000),
    ("sgbm.speckle_range", 0, 1000),
    ("sgbm.disp12_max_diff", -1, 4096),
    ("sgbm.pre_filter_cap", 1, 1000),
    ("evidence.occupied_per_ray", 0.0, 1e6),
    ("evidence.free_per_ray", 0.0, 1e6),
    ("evidence.ground_z", -100.0, 100.0),
    ("evidence.min_obstacle_pixels", 1, 1_000_000),
    ("evidence.ray_bins", 0, 360_000),
    ("evidence.pixel_stride", 1, 64),
    ("evidence.reference_ray_deg", 1e-3, 90.0),
    ("evidence.max_depth_m", 0.1, 10_000.0),
    ("evidence.disparity_sigma_px", 0.0, 100.0),
    ("evidence.free_margin_sigmas", 0.0, 100.0),
    ("evidence.min_range_m", 0.0, 1000.0),
    ("learned.input_width", 64, 4096),
    ("learned.evidence_scale", 1e-6, 1e6),
    ("learned.max_depth_m", 0.1, 10_000.0),
    ("learned.min_range_m", 0.0, 1000.0),
    ("learned.consistency_tol", 1e-3, 100.0),
    ("learned.texture_min", 0.0, 100.0),
    # bev_fusion (camera_info_wait_s, max_wait_s, match_tolerance_s above apply too)
    ("lidar_timeout_s", 0.0, 3600.0),
    ("camera_timeout_s", 0.0, 3600.0),
    ("image_queue_size", 1, 1000),
    # control
    ("lookahead_m", 0.0, 1000.0),
    ("interval_level", 1e-6, 0.999999),
    ("input_alpha", 1.000001, 1e6),
    ("prior_alpha", -0.5, 1.0),
    ("history_s", 0.0, 60.0),
    ("max_frames", 1, 1000),
    ("max_input_latency_s", 0.0, 3600.0),
    ("stale_command_period_s", 0.001, 60.0),
    ("time_jump_s", 0.0, 3600.0),
    ("health_timeout_s", 0.0, 3600.0),
    ("vehicle.wheelbase_m", 0.01, 100.0),
    ("vehicle.speed_mps", 0.0, 100.0),
    ("vehicle.fallback_speed_mps", 0.0, 100.0),
    ("vehicle.max_steering_rad", 0.001, 1.57),
    ("vehicle.max_lateral_accel_mps2", 0.0, 100.0),
    ("fallback.enter_threshold", 0.0, 1e6),
    ("fallback.exit_threshold", 0.0, 1e6),
    ("fallback.recover_frames", 1, 100_000),
    ("fallback.input_timeout_s", 0.001, 3600.0),
    ("fallback.hold_s", 0.0, 3600.0),
    ("health.min_points", 0, 100_000_000),
    ("health.min_point_ratio", 0.0, 1.0),
    ("health.baseline_scans", 1, 10_000),
    ("health.min_azimuth_coverage", 0.0, 1.0),
    ("health.azimuth_bins", 0, 3600),
    ("health.min_points_per_bin", 0, 1_000_000),
)

#: allowed values of string parameters (fnmatch patterns)
CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qos.*", ("sensor", "reliable", "latched")),
    ("geometry_mismatch", ("resample", "reject")),
    ("box_rule", ("information", "covariance_intersection")),
    ("sgbm.mode", ("sgbm", "sgbm_3way", "hh", "hh4")),
    ("method", ("sgbm", "learned")),  # stereo_occupancy
    ("command_type", ("ackermann", "twist")),
    ("uncertainty_metric", ("std", "interval_width")),
    ("fallback.final_action", ("straight", "stop")),
)

#: parameters wired once when the node is configured: changing them needs a restart (or a lifecycle
#: cleanup + configure); everything else is applied at runtime by ``NodeCore.reconfigure``
READ_ONLY: tuple[str, ...] = (
    "*_topic", "qos.*", "autostart", "calibration_file", "use_tf_static", "use_tf", "base_frame", "latency_window",
    "sync.queue_size", "keep_grids_for_report", "runtime", "weights", "threads", "sparse_tune_file", "fusion_queue_size",
    "branches.*",  # fusion: the branch set is wired at start
    "cameras", "pool_checks",
    "scan_health.*",  # the scan-health baseline is kept from the start
    "classes",  # detection_fusion: the class set is wired at start
    "curvature_topics", "command_type",  # control: subscriptions and the command's message type
    "method",  # stereo_occupancy: the learned mode loads its network at start
)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of one node, in ROS terms."""

    name: str  #: dotted ROS name
    default: Any
    type: str  #: bool, integer, double, string, bool_array, integer_array, double_array, string_array
    description: str
    read_only: bool
    range: tuple[float, float] | None  #: inclusive, numeric types only
    choices: tuple[str, ...] | None = None  #: allowed values of a string parameter

    def check(self, value: Any) -> Any:
        """``value`` in this parameter's type (ints widen to doubles); ValueError with the reason if not."""
        if self.type.endswith("_array") and isinstance(value, (list, tuple)) and not value:
            raise ValueError(f"{self.name} is an empty list: ROS cannot type an empty list in a parameter file "
                             f"(rcl leaves it without a value, so the node would not start): give at least one "
                             f"element ({self.type}), or leave the key out for the default {self.default!r}")
        value = coerce(self.type, value)
        if value is None:
            raise ValueError(f"{self.name} must be of type {self.type}")
        if self.range is not None:
            lo, hi = self.range
            if not lo <= value <= hi:
                raise ValueError(f"{self.name}={value!r} is outside its range [{lo:g}, {hi:g}]")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name}={value!r} is not one of {', '.join(self.choices)}")
        return value


def value_type(value: Any) -> str:
    """The ROS parameter type name of a YAML value (what rcl would make of it)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list) and value:
        inner = {value_type(v) for v in value}
        if inner <= {"integer", "double"} and "double" in inner:
            return "double_array"
        if len(inner) == 1 and next(iter(inner)) in ("bool", "integer", "string"):
            return next(iter(inner)) + "_array"
    raise ValueError(f"{value!r} cannot be a ROS parameter (nested or empty list, map or null)")


def coerce(type_name: str, value: Any) -> Any:
    """``value`` as ``type_name`` (integers widen to double, as a YAML author means ``1`` for ``1.0``);
    None when it does not fit. "true"/"false" strings count as bools (launch arguments are strings)."""
    if type_name == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if type_name == "double" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_name == "double_array" and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    if type_name.endswith("_array") and isinstance(value, (list, tuple)):
        value = list(value)
        try:
            if value and value_type(value) == type_name:
                return value
        except ValueError:
            return None
        return None
    try:
        return value if value_type(value) == type_name else None
    except ValueError:
        return None


def _match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def range_of(name: str) -> tuple[float, float] | None:
    for pattern, lo, hi in RANGES:
        if fnmatch.fnmatchcase(name, pattern):
            return lo, hi
    return None


def choices_of(name: str) -> tuple[str, ...] | None:
    for pattern, values in CHOICES:
        if fnmatch.fnmatchcase(name, pattern):
            return values
    return None


def is_read_only(name: str) -> bool:
    return _match(name, READ_ONLY)


_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*|'\*\*'|\"\*\*\"):(.*)$")
_HEADER = re.compile(r"^#   (\w+)\s{2,}(\S.*)$")
_HEADER_MORE = re.compile(r"^#\s{10,}(\S.*)$")


def _comment_of(rest: str) -> str:
    """The comment after a YAML value (`` # ...``), or ''."""
    i = rest.find(" #")
    if rest.lstrip().startswith("#"):
        return rest.lstrip()[1:].strip()
    return rest[i + 2:].strip() if i >= 0 else ""


def parse_descriptions(text: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(node -> dotted name -> description, common name -> description) from the params file's comments."""
    per_node: dict[str, dict[str, str]] = {}
    common: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: tuple[str, str, int] | None = None  # (node, dotted name, key column) of the last key line
    header_key: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stack:  # the header table of common parameters
                if m := _HEADER.match(line):
                    header_key = m.group(1)
                    common[header_key] = m.group(2).strip()
                elif header_key and (m := _HEADER_MORE.match(line)):
                    common[header_key] += " " + m.group(1).strip()
                else:
                    header_key = None
                continue
            indent = len(line) - len(line.lstrip())
            if last is not None and indent > last[2] and last[1] in per_node.get(last[0], {}):
                per_node[last[0]][last[1]] += " " + stripped[1:].strip()
            else:
                last = None
            continue
        m = _KEY.match(line)
        if not m:
            last = None
            continue
        indent, key, rest = len(m.group(1)), m.group(2).strip("'\""), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = [k for _, k in stack]
        if len(path) < 3 or path[1] != "ros__parameters":
            last = None
            continue
        node, name = path[0], ".".join(path[2:])
        comment = _comment_of(rest)
        if comment:
            per_node.setdefault(node, {})[name] = comment
            last = (node, name, indent)
        else:
            last = None
    return per_node, common


@lru_cache(maxsize=None)
def _defaults_text() -> str:
    return DEFAULTS_PATH.read_text()


@lru_cache(maxsize=None)
def node_schema(node: str) -> dict[str, ParamSpec]:
    """Every parameter of ``node`` (as in perception.params.yaml) by dotted name."""
    from perception_nodes.config import flatten

    doc = yaml.safe_load(_defaults_text())
    if node not in doc:
        raise KeyError(f"no node {node!r} in {DEFAULTS_PATH.name}")
    per_node, common = parse_descriptions(_defaults_text())
    shared = {k: v for d in per_node.values() for k, v in d.items() if k.startswith("ground.")}
    out = {}
    for name, default in flatten(doc[node]["ros__parameters"] or {}).items():
        desc = (per_node.get(node, {}).get(name) or shared.get(name) or common.get(name)
                or common.get(name.split(".")[0]) or "")
        if name.startswith("branches.") and not desc:  # fusion: a branch key described at another branch
            leaf = name.split(".", 2)[-1]
            desc = next((v for k, v in per_node.get(node, {}).items()
                         if k.startswith("branches.") and k.split(".", 2)[-1] == leaf), "")
        if ".health_inputs." in name and not desc:  # ... or a health input's key at another input
            leaf = name.rsplit(".", 1)[-1]
            desc = next((v for k, v in per_node.get(node, {}).items()
                         if ".health_inputs." in k and k.rsplit(".", 1)[-1] == leaf), "")
        if name.startswith("latency_budgets_ms.") and not desc:
            desc = f"budget (ms) of {name.split('.', 1)[1]}: " + common.get("latency_budgets_ms", "")
        out[name] = ParamSpec(name, default, value_type(default), desc, is_read_only(name), range_of(name),
                              choices_of(name))
    return out


def check_values(node: str, flat: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Checked and coerced copy of ``flat`` (dotted names); one ConfigError naming every unknown name and
    every wrong type or range (``; ``-separated), so a file with several mistakes is fixed in one go."""
    from perception_nodes.config import ConfigError

    specs = node_schema(node)
    out = {}
    errors = []
    for name, value in flat.items():
        spec = specs.get(name)
        if spec is None:
            errors.append(f"unknown parameter {where}{node}.{name} (see {DEFAULTS_PATH.name})")
            continue
        try:
            out[name] = spec.check(value)
        except ValueError as exc:
            errors.append(f"{where}{node}.{exc}")
    if errors:
        raise ConfigError("; ".join(errors))
    return out
