"""The params file: defaults documented in one place, overrides, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from perception_nodes.config import ConfigError, flatten, load_params, to_dataclass, unflatten
from perception_nodes.graph import NODE_TYPES
from perception_nodes.pipeline.ground import GroundParams
from perception_nodes.pipeline.occupancy import GridSpec, OccupancyParams


def test_defaults_match_the_dataclass_defaults():
    """The YAML is where defaults are documented; it must not drift from the code's defaults."""
    p = load_params()
    assert set(NODE_TYPES) <= set(p)
    assert to_dataclass(GroundParams, p["ground_segmentation"]["ground"]) == GroundParams()
    evidence = dict(p["occupancy_grid"]["evidence"])
    assert evidence.pop("ego_box") == [-2.5, 2.7, -1.7, 1.7]  # rig-specific: the KITTI car's footprint
    assert to_dataclass(OccupancyParams, evidence) == OccupancyParams()
    assert to_dataclass(GridSpec, p["occupancy_grid"]["grid"]) == GridSpec()


def test_override_merges_and_rejects_unknown(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolution: 0.5}\n")
    p = load_params(f)
    assert p["occupancy_grid"]["grid"]["resolution"] == 0.5
    assert p["occupancy_grid"]["grid"]["size_x"] == 80.0  # untouched default
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolutoin: 0.5}\n")
    with pytest.raises(ConfigError, match="resolutoin"):
        load_params(f)
    f.write_text("nonexistent_node:\n  ros__parameters: {}\n")
    with pytest.raises(ConfigError, match="unknown node"):
        load_params(f)
    f.write_text("'**':\n  ros__parameters: {base_frame: vehicle}\n")
    assert all(v["base_frame"] == "vehicle" for k, v in load_params(f).items() if k in NODE_TYPES)


def test_flatten_round_trip():
    tree = load_params()["occupancy_grid"]
    flat = flatten(tree)
    assert "grid.resolution" in flat and "sync.obstacle_timeout_s" in flat
    assert unflatten(flat) == {k: v for k, v in tree.items() if v != {}}


def test_to_dataclass_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="bogus"):
        to_dataclass(GroundParams, {"bogus": 1})
    assert dataclasses.is_dataclass(to_dataclass(GridSpec, {"origin": [-10.0, -5.0]}))


def test_params_file_is_rcl_loadable_and_checked_like_rcl(tmp_path):
    """Only scalars, strings and flat non-empty lists (what rcl accepts); ranges and types as the ROS path."""
    import yaml

    from perception_nodes.config import DEFAULTS_PATH
    from perception_nodes.config.schema import node_schema, value_type

    doc = yaml.safe_load(DEFAULTS_PATH.read_text())
    for node, body in doc.items():
        for name, value in flatten(body["ros__parameters"]).items():
            value_type(value)  # raises for nested lists, empty maps, nulls
    assert node_schema("occupancy_grid")["ground.ring_zone_starts"].type == "double_array"
    assert "m per cell" in node_schema("occupancy_grid")["grid.resolution"].description
    f = tmp_path / "p.yaml"
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolution: -5.0}\n")
    with pytest.raises(ConfigError, match="grid.resolution.*outside its range"):
        load_params(f)
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {size_x: big}\n")
    with pytest.raises(ConfigError, match="grid.size_x must be of type double"):
        load_params(f)
    f.write_text("occupancy_grid:\n  ros__parameters:\n    qos: {output: fast}\n")
    with pytest.raises(ConfigError, match="qos.output='fast' is not one of sensor, reliable, latched"):
        load_params(f)
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolution: 1}\n")  # int for a double
    assert load_params(f)["occupancy_grid"]["grid"]["resolution"] == 1.0


def test_ring_zones_as_parallel_lists():
    g = to_dataclass(GroundParams, {"ring_zone_starts": [0.0, 10.0], "ring_zone_widths": [2.0, 5.0]})
    assert g.ring_zones == ((0.0, 2.0), (10.0, 5.0))
    with pytest.raises(ConfigError, match="same length"):
        to_dataclass(GroundParams, {"ring_zone_starts": [0.0, 10.0], "ring_zone_widths": [2.0]})
    with pytest.raises(ConfigError, match="ring_zone_widths"):
        to_dataclass(GroundParams, {"ring_zone_starts": [0.0, 10.0]})
    with pytest.raises(ConfigError, match="increasing starts"):
        to_dataclass(GroundParams, {"ring_zone_starts": [0.0, 10.0, 5.0], "ring_zone_widths": [1.0, 1.0, 1.0]})


def test_reconfigure_is_all_or_nothing_and_refuses_read_only():
    from perception_nodes.codecs.backend import default_backend
    from perception_nodes.graph import NODE_TYPES

    p = load_params()["occupancy_grid"]
    node = NODE_TYPES["occupancy_grid"]("occupancy_grid", p, backend=default_backend(), clock=lambda: 0)
    with pytest.raises(ConfigError, match="read-only"):
        node.reconfigure({"output_topic": "/x"})
    with pytest.raises(ValueError, match="obstacle_max_height"):
        node.reconfigure({"grid.resolution": 0.5, "evidence.obstacle_max_height": 0.0})
    assert node.grid.resolution == 0.25  # nothing applied
    node.reconfigure({"grid": {"resolution": 0.5}, "latency_budgets_ms.processing_time": 5.0,
                      "sync.max_interval_s": 0.02, "ground.ring_zone_widths": [2.0, 4.0, 8.0]})
    assert node.grid.resolution == 0.5 and node.latency.budgets_ms["processing_time"] == 5.0
    assert node.sync._max_interval_ns == 20_000_000 and node.ground_params.ring_zones[0] == (0.0, 2.0)


def test_an_empty_list_says_so_and_every_mistake_is_reported_at_once(tmp_path):
    """ROS cannot type an empty list in a params file (rcl gives it no value), so ``[]`` is refused as on the
    ROS path, with a message that says the list is empty; several mistakes come in one error."""
    f = tmp_path / "p.yaml"
    f.write_text("control:\n  ros__parameters:\n    curvature_topics: []\n")
    with pytest.raises(ConfigError, match=r"control\.curvature_topics is an empty list") as exc:
        load_params(f)
    assert "must be of type" not in str(exc.value) and str(f) in str(exc.value)
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolution: -5.0, size_x: big}\n    gird: 1\n"
                 "    qos: {output: fast}\nnot_a_node:\n  ros__parameters: {a: 1}\n")
    with pytest.raises(ConfigError) as exc:
        load_params(f)
    msg = str(exc.value)
    for said in ("grid.resolution=-5.0 is outside its range", "grid.size_x must be of type double",
                 "unknown parameter occupancy_grid.gird", "qos.output='fast' is not one of",
                 "unknown node 'not_a_node'"):
        assert said in msg, (said, msg)
    assert all(part.startswith(f"{f}: ") for part in msg.split("; ")), msg
