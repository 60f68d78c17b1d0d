"""Session-wide test set-up: loopback-only ROS, a domain per run and one per ROS test, real data, shared bags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Network rule: DDS discovery on loopback only, and a domain of our own for this test run, set before
# anything can import rclpy.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
from tests.ros_util import claim_ros_domain  # noqa: E402

os.environ["ROS_DOMAIN_ID"] = str(claim_ros_domain())
from perception_nodes.ros.env import ensure_loopback_default  # noqa: E402  (Fast DDS loopback profile)

ensure_loopback_default()


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fast DDS segments of the run's subprocesses (and of earlier runs) that no process owns any more go:
    each is up to 32 MiB of RAM in /dev/shm until reboot (perception_nodes/ros/shm_cleanup.py)."""
    from perception_nodes.ros.shm_cleanup import report_zombie_cleanup

    report_zombie_cleanup()  # (this process's own segments are still open here: the next start takes them)


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
def ros_domain(monkeypatch) -> int:
    """A ROS domain of this test's own (:func:`tests.ros_util.claim_ros_domain`), in ``ROS_DOMAIN_ID`` for the
    processes the test starts."""
    domain = claim_ros_domain()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    return domain


@pytest.fixture()
def ros_context(ros_domain):
    """A fresh rclpy context per test (real rclpy + Fast DDS) on the test's own domain (``ros_domain``);
    skipped where rclpy is missing."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (ros-* wheels or a ROS 2 install)")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain)
    yield ctx
    if ctx.ok():
        rclpy.shutdown(context=ctx)
