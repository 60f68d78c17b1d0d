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
    seg = d / f"fastdds_{name}"
    seg.write_bytes(b"\1" * size)
    for f in (seg, d / f"fastdds_{name}_el", d / f"fastdds_{name}_sl"):
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
        fcntl.flock(owner, fcntl.LOCK_SH)  # what a live participant holds
        result = remove_zombie_segments(tmp_path)
    assert (result.segments, result.kept) == (1, 2)
    assert result.bytes_freed >= 1 << 16  # the dead segment's allocated size
    assert not dead.exists() and not (tmp_path / "fastdds_0123456789abcdef_el").exists()
    assert not (tmp_path / "fastdds_0123456789abcdef_sl").exists()
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
def test_a_live_participants_segments_are_kept_and_removed_once_it_is_killed():
    pytest.importorskip("rclpy", reason="rclpy not installed (ros-* wheels or a ROS 2 install)")
    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm here: Fast DDS's shared-memory transport is not in use")
    before = {p.name for p in SHM_DIR.iterdir()}
    code = ("from perception_nodes.ros.env import import_rclpy\nrclpy = import_rclpy()\nrclpy.init()\n"
            "node = rclpy.create_node('shm_owner')\nprint('up', flush=True)\nimport time\ntime.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert owner.stdout.readline().strip() == "up"
        mine = [SHM_DIR / n for n in {p.name for p in SHM_DIR.iterdir()} - before
                if n.startswith("fastdds_") and len(n) == len("fastdds_") + 16]
        assert mine, "the participant mapped no segment (large-data profile not in use?)"
        remove_zombie_segments(min_age_s=0.0)
        assert all(p.exists() for p in mine)  # its owner holds the lock
    finally:
        owner.kill()
        owner.wait()
    remove_zombie_segments(min_age_s=0.0)
    assert not any(p.exists() for p in mine)  # killed: nobody deletes them but the cleanup
