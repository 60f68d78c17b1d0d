"""What must import without the ROS-side libraries: the GPU checks run on a lent CUDA machine that has
torch, numpy and numba but neither rosbags nor rclpy (benchmarks/gpu_check.sh), and read KITTI folders
(tqdm is refused too: only the bag converters need it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import builtins, sys
real = builtins.__import__
def guarded(name, *a, **k):
    if name.split(".")[0] in ("rosbags", "mcap", "rclpy", "tqdm"):
        raise ImportError(f"{name} imported, but the GPU machine does not have it")
    return real(name, *a, **k)
builtins.__import__ = guarded
sys.path.insert(0, "benchmarks")
import lidar_branch_gpu, sparse_conv_gpu  # noqa: F401
from perception_nodes.datasets import read_kitti_object  # noqa: F401
from perception_nodes.models.weights_io import load_lidar_detection
from perception_nodes.models.decode import decode_batch  # noqa: F401
import tests.engines.conftest  # noqa: F401  (test_gpu.py's helpers)
load_lidar_detection("perception_nodes/models/weights/lidar_detection")
try:
    from perception_nodes.datasets import read_bag_frames  # the bag reader does need rosbags
except ImportError as e:
    assert "rosbags" in str(e), e
else:
    raise AssertionError("read_bag_frames imported without rosbags")
print("ok")
"""


def test_gpu_checks_import_without_ros_libraries() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
