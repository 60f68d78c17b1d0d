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
