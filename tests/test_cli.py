"""The perception-stack CLI as a user runs it: help texts, params, convert + replay end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

COMMANDS = [["replay"], ["evaluate"], ["generate"], ["train"], ["convert", "kitti"], ["live"], ["play"], ["monitor"], ["params"]]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perception_nodes", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=os.environ.copy())


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_explains_itself(cmd):
    out = _run(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: perception-stack" in out.stdout and len(out.stdout) > 200


def test_params_prints_documented_defaults_and_merges(tmp_path):
    out = _run("params")
    assert out.returncode == 0 and "ros__parameters" in out.stdout and "# " in out.stdout
    f = tmp_path / "p.yaml"
    f.write_text("occupancy_grid:\n  ros__parameters:\n    grid: {resolution: 0.5}\n")
    merged = json.loads(_run("params", "--config", str(f)).stdout)
    assert merged["occupancy_grid"]["grid"]["resolution"] == 0.5
    f.write_text("occupancy_grid:\n  ros__parameters:\n    gird: {}\n")
    bad = _run("params", "--config", str(f))
    assert bad.returncode == 2 and "gird" in bad.stderr


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
