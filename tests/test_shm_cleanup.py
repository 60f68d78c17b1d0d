"""Zombie Fast DDS shared-memory segments (ros/shm_cleanup.py): removed when no process holds their lock, kept
while their owner lives -- on files laid out as Fast DDS lays them out, and on a real participant."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perception_nodes.ros.shm_cleanup import SHM_DIR, remove_zombie_segments, report_zombie_cleanup


def _segment(d: Path, name: str, size: int = 1 << 16, age_s: float = 60.0) -> Path:
    """A segment as Fast DDS lays it out: ``fastdds_<id>`` and its lock file ``fastdds_<id>_el``."""
    seg = d / f"fastdds_{name}"
    seg.write_bytes(b"\1" * size)
    for f in (seg, d / f"fastdds_{name}_el"):
        f.touch()
        os.utime(f, (time.time() - age_s,) * 2)
    return seg


def test_only_unlocked_old_segments_go_and_nothing_else_is_touched(tmp_path):
    dead = _segment(tmp_path, "0123456789abcdef")
    alive = _segment(tmp_path, "fedcba9876543210")
    young = _segment(tmp_path, "00000000deadbeef", age_s=0.0)
    others = [tmp_path / "fastdds_port7411", tmp_path / "sem.fastdds_port7411_mutex", tmp_path / "not_ours"]
    for f in others:
        f.touch()
    with open(tmp_path / "fastdds_fedcba9876543210_el", "rb") as owner:
        fcntl.flock(owner, fcntl.LOCK_EX)  # what a live participant holds (another open file: still refused)
        result = remove_zombie_segments(tmp_path)
    assert (result.segments, result.kept) == (1, 2)
    assert result.bytes_freed >= 1 << 16  # the dead segment's allocated size
    assert not dead.exists() and not (tmp_path / "fastdds_0123456789abcdef_el").exists()
    assert alive.exists() and young.exists() and all(f.exists() for f in others)
    assert "removed 1 Fast DDS shared-memory segment" in result.summary()


def test_report_can_be_switched_off_and_a_missing_directory_is_no_error(tmp_path, monkeypatch, capsys):
    _segment(tmp_path, "0123456789abcdef")
    monkeypatch.setenv("PERCEPTION_KEEP_SHM", "1")
    assert report_zombie_cleanup(tmp_path).segments == 0 and (tmp_path / "fastdds_0123456789abcdef").exists()
    monkeypatch.delenv("PERCEPTION_KEEP_SHM")
    assert report_zombie_cleanup(tmp_path).segments == 1
    assert "removed 1 Fast DDS shared-memory segment" in capsys.readouterr().err
    assert remove_zombie_segments(tmp_path / "no_such_dir").segments == 0


@pytest.mark.ros
def test_a_live_participants_segments_are_kept_and_removed_once_it_is_killed(ros_domain):
    pytest.importorskip("rclpy", reason="rclpy not installed (ros-* wheels or a ROS 2 install)")
    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm here: Fast DDS's shared-memory transport is not in use")
    code = ("from perception_nodes.ros.env import import_rclpy\nrclpy = import_rclpy()\nrclpy.init()\n"
            "node = rclpy.create_node('shm_owner')\nprint('up', flush=True)\nimport time\ntime.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert owner.stdout.readline().strip() == "up"
        # its own segments: what the process has mapped from /dev/shm (not what other processes made meanwhile)
        maps = Path(f"/proc/{owner.pid}/maps").read_text()
        mine = sorted({SHM_DIR / Path(line.split()[-1]).name for line in maps.splitlines()
                       if f"{SHM_DIR}/fastdds_" in line and "port" not in line})
        assert mine, "the participant mapped no segment (large-data profile not in use?)"
        locks = [p.with_name(p.name + "_el") for p in mine]
        for f in locks:  # old enough for the cleanup to judge it, as after a long run
            os.utime(f, (time.time() - 60,) * 2)
        remove_zombie_segments()
        assert all(p.exists() for p in mine)  # its owner holds the lock
    finally:
        owner.kill()
        owner.wait()
    remove_zombie_segments()
    assert not any(p.exists() for p in mine + locks)  # killed: nobody deletes them but the cleanup
