"""The perception-stack CLI as a user runs it: help texts, params, convert + replay end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

COMMANDS = [["replay"], ["evaluate"], ["generate"], ["train"], ["convert", "kitti"], ["live"], ["play"], ["monitor"], ["params"],
            ["engines", "tune"], ["engines", "show"], ["lidar-eval"]]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perception_nodes", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=os.environ.copy())


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_explains_itself(cmd):
    out = _run(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: perception-stack" in out.stdout and len(out.stdout) > 200
    assert "%%" not in out.stdout  # descriptions are not %-formatted: a doubled percent shows as is
    positionals = out.stdout.split("positional arguments:")[1].split("options:")[0] if "positional arguments:" \
        in out.stdout else ""
    for line in positionals.splitlines()[1:]:  # every positional argument says what it is
        if line.startswith("  ") and not line.startswith("   ") and line.split()[0].isidentifier():
            assert len(line.split()) > 1, f"{' '.join(cmd)}: {line.strip()} has no help"


def test_top_level_help_shows_the_three_shell_live_workflow():
    out = _run("--help").stdout
    for example in ("convert kitti ../shared/data/kitti_object_vis/data/object/training --out kitti_bag",
                    "live --use-sim-time", "play kitti_bag --clock --loop", "perception-stack monitor"):
        assert example in out, example


def test_live_help_names_the_graph_and_where_it_is_described():
    out = _run("live", "--help").stdout
    for node in ("ground_segmentation", "occupancy_grid", "lidar_detection", "stereo_occupancy", "camera_bev", "fusion",
                 "detection_fusion", "calibration_monitor", "control", "odometry_topic", "What runs"):
        assert node in " ".join(out.split()), node


def test_params_prints_documented_defaults_and_merges(tmp_path):
    out = _run("params")
    assert out.returncode == 0 and "ros__parameters" in out.stdout and "# " in out.stdout
    f = tmp_path / "p.yaml"
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolution: 0.5}\n")
    merged = json.loads(_run("params", "--config", str(f)).stdout)
    assert merged["occupancy_grid"]["grid"]["resolution"] == 0.5
    f.write_text("occupancy_grid:\n  ros__parameters:\n    gird: {}\n")
    bad = _run("params", "--config", str(f))
    assert bad.returncode == 2 and "gird" in bad.stderr and str(f) in bad.stderr


def test_params_rejects_what_the_nodes_reject(tmp_path):
    """Cross-parameter checks live in the node constructors; `params --config` must run them too, so a
    file it accepts is one that replay and live accept."""
    from perception_nodes.config import load_params
    from perception_nodes.graph import check_graph_params

    f = tmp_path / "p.yaml"
    f.write_text("occupancy_grid:\n  ros__parameters:\n    evidence: {obstacle_max_height: 0.1}\n")
    with pytest.raises(ValueError) as built:  # what replay/live hit when they build the node
        check_graph_params(load_params(f))
    bad = _run("params", "--config", str(f))
    assert bad.returncode == 2 and bad.stdout == ""
    assert str(f) in bad.stderr and str(built.value) in bad.stderr
    assert "obstacle_max_height must exceed obstacle_min_height" in bad.stderr
    f.write_text("occupancy_grid:\n  ros__parameters:\n    evidence: {obstacle_max_height: 2.5}\n")
    assert _run("params", "--config", str(f)).returncode == 0


def test_convert_then_replay_from_the_command_line(kitti_dir, tmp_path):
    bag = tmp_path / "kitti"
    conv = _run("convert", "kitti", str(kitti_dir), "--out", str(bag), "--limit", "2", "--quiet")
    assert conv.returncode == 0, conv.stderr
    assert "2 frames" in conv.stdout and "/sensing/lidar/points x2" in conv.stdout
    out = tmp_path / "run"
    rep = _run("replay", "--bag", str(bag), "--out", str(out), "--quiet")
    assert rep.returncode == 0, rep.stderr
    assert "end-to-end latency" in rep.stdout
    doc = json.loads((out / "latency.json").read_text())
    assert doc["end_to_end"]["count"] == 2
    assert (out / "outputs.mcap").is_file() and (out / "report.html").is_file()
    missing = _run("replay", "--bag", str(tmp_path / "nope"), "--out", str(out), "--quiet")
    assert missing.returncode == 2 and "not a rosbag2 folder" in missing.stderr


def test_evaluate_summary_prints_detection_ap_at_all_and_moderate(capsys):
    from perception_nodes.cli import _print_detection

    m = {"detection": {
        "kitti": {"headline_level": "all", "per_class": {
            "car": {"all": {"ap_r40_3d": 0.91, "n_gt": 120}}, "cyclist": {"all": {"ap_r40_3d": None, "n_gt": 0}}}},
        "kitti_graded": {"per_class": {"car": {"moderate": {"ap_r40_3d": 0.95, "n_gt": 30}}}}}}
    _print_detection(m)
    out = capsys.readouterr().out
    assert "car AP3D 0.910 (120 boxes), moderate 0.950* (30 boxes)" in out and "caps AP at (n-1)/40" in out
    assert "cyclist" not in out  # no box of the class: nothing to report
    _print_detection({"detection": None})
    assert capsys.readouterr().out == ""
