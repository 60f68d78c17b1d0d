"""Session-wide test set-up: loopback-only ROS, a per-run domain, real data, shared bags."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# Network rule: DDS discovery on loopback only, and a domain of our own for this test run, set before
# anything can import rclpy.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
from perception_nodes.ros.env import ensure_loopback_default  # noqa: E402  (Fast DDS loopback profile)

ensure_loopback_default()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
KITTI_OBJECT = SHARED_DATA / "kitti_object_vis/data/object/training"


def load_script(path: Path, name: str):
    """A script outside the package (``benchmarks/*.py``) imported as a module, for testing its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (shared/data must sit beside the checkout)")
    return path


@pytest.fixture(scope="session")
def kitti_dir() -> Path:
    return require(KITTI_OBJECT)


@pytest.fixture(scope="session")
def kitti_bag(kitti_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three KITTI object frames converted once per session (what `convert kitti` makes)."""
    from perception_nodes.bags.kitti import convert_kitti

    out = tmp_path_factory.mktemp("kitti") / "bag"
    convert_kitti(kitti_dir, out, progress=False)
    return out


@pytest.fixture(scope="session")
def scenario_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run of the embedded default scenario (1 s, 10 frames)."""
    from perception_nodes.scenario.bag import write_scenario_bag

    out = tmp_path_factory.mktemp("scenario") / "bag"
    return write_scenario_bag(out, duration_s=1.0, progress=False)


@pytest.fixture()
def ros_context():
    """A fresh rclpy context per test (real rclpy + Fast DDS); skipped where rclpy is missing."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (ros-* wheels or a ROS 2 install)")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    if ctx.ok():
        rclpy.shutdown(context=ctx)
    ctx.destroy()  # the DDS participant goes now, not when the collector gets to it (later tests share the domain)
