"""Packaging and set-up: declared imports, a core-only install, the shell environment, the colcon packages."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"perception_nodes", "engines"}


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1)).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits in a ``try`` that catches ImportError (an optional import)."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if h.type is None or any(isinstance(n, ast.Name) and n.id in
                                         ("ImportError", "ModuleNotFoundError", "Exception") for n in names):
                    return True
    return False


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it (anywhere: module level or inside functions), unguarded only."""
    found: dict[str, set[str]] = {}
    for top in FIRST_PARTY:
        for path in (REPO / top).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    root = mod.split(".")[0]
                    if root in sys.stdlib_module_names or root in FIRST_PARTY or _guarded(node, parents):
                        continue
                    found.setdefault(root, set()).add(str(path.relative_to(REPO)))
    return found


#: import name -> distribution, for modules that may not be installed here (GPU-only)
NOT_INSTALLED_HERE = {"triton": "triton"}


def test_every_third_party_import_is_declared_in_pyproject():
    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_name(r) for r in reqs if not r.startswith("perception-nodes[")}
    dists = md.packages_distributions()
    imports = _third_party_imports()
    assert {"numpy", "numba", "torch", "rclpy"} <= set(imports)  # the scan sees function-level imports too
    missing = {}
    for mod, files in sorted(imports.items()):
        names = {_name(d) for d in dists.get(mod, [])} or {NOT_INSTALLED_HERE.get(mod, mod)}
        if not names & declared:
            missing[mod] = (sorted(names), sorted(files)[:3])
    assert not missing, f"imported but not declared in pyproject.toml (module: distributions, files): {missing}"


def _core_closure() -> set[str]:
    """Distributions a plain ``pip install .`` brings: the core dependencies and what they require."""
    todo = [_name(r) for r in _pyproject()["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in reqs if "extra ==" not in r.replace('"', "").replace("'", "")]
    return seen


BLOCKER = r"""
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by a core-only install)")
sys.meta_path.insert(0, _Block())
sys.argv = ["perception-stack", *sys.argv[2:]]
from perception_nodes.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_core_only_install_runs_help_and_replay(scenario_bag, tmp_path):
    """Every module that only an extra or ROS provides is made unimportable; --help and a replay still work."""
    core = _core_closure()
    assert {"numpy", "numba", "rosbags", "pillow", "llvmlite"} <= core
    blocked = sorted(mod for mod, ds in md.packages_distributions().items()
                     if mod not in FIRST_PARTY and not {_name(d) for d in ds} & core)
    blocked += ["rclpy", "rosidl_runtime_py", "tf2_msgs", "perception_interfaces", "sensor_msgs", "triton"]
    assert "torch" in blocked and "onnxruntime" in blocked and "safetensors" in blocked

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BLOCKER, ",".join(blocked), *args], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    r = cli("--help")
    assert r.returncode == 0 and "usage" in r.stdout, r.stderr[-2000:]
    # the report (matplotlib, a core dependency) is left out only to keep this test short
    r = cli("replay", "--bag", str(scenario_bag), "--out", str(tmp_path / "out"), "--quiet", "--no-report")
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("latency.json", "outputs.mcap"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name


# --- the shell environment ------------------------------------------------------------------------------
def _domain(env: dict[str, str]) -> str:
    r = subprocess.run(["bash", "-c", ". scripts/ros_env.sh && echo $ROS_DOMAIN_ID"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_ros_env_gives_every_shell_of_a_user_one_domain_unless_one_is_set():
    base = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    first, second = _domain(base), _domain(base)  # two shells: two different PIDs
    assert first == second == str(1 + os.getuid() % 101)
    assert 1 <= int(first) <= 101  # ROS 2's portable range on Linux is 0..101
    assert _domain({**base, "ROS_DOMAIN_ID": "57"}) == "57"
    assert _domain({**base, "ROS_DOMAIN_ID": "0"}) == "0"


# --- the bringup package ----------------------------------------------------------------------------------
BRINGUP = REPO / "ros_ws" / "src" / "perception_bringup"
#: file in the package -> its original (see ros_ws/src/perception_bringup/README.md)
BRINGUP_COPIES = {
    "launch/perception.launch.py": REPO / "launch" / "perception.launch.py",
    "config/perception.params.yaml": REPO / "perception_nodes" / "config" / "perception.params.yaml",
}


@pytest.mark.parametrize("rel", sorted(BRINGUP_COPIES))
def test_bringup_holds_real_copies_identical_to_the_originals(rel):
    copy = BRINGUP / rel
    assert copy.is_file() and not copy.is_symlink(), f"{copy} must be a regular file inside the package"
    assert copy.read_bytes() == BRINGUP_COPIES[rel].read_bytes(), (
        f"{copy} differs from {BRINGUP_COPIES[rel]}: run `bash scripts/setup.sh` (it refreshes the copy)")


@pytest.mark.slow
def test_a_copy_of_the_bringup_package_installs_launch_and_config_files(tmp_path):
    """colcon build of the package copied elsewhere (links copied as links) installs real, full files."""
    colcon = Path(sys.prefix) / "bin" / "colcon"
    if not colcon.exists():
        colcon = Path(shutil.which("colcon") or "/nonexistent")
    if not colcon.exists():
        pytest.skip("colcon not installed (requirements/ros.txt or a ROS 2 install)")
    ws = tmp_path / "ws"
    shutil.copytree(BRINGUP, ws / "src" / "perception_bringup", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    r = subprocess.run(["bash", "-c", f". '{REPO}/scripts/ros_env.sh' && cd '{ws}' && "
                        f"'{colcon}' build --event-handlers console_direct-"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    share = ws / "install" / "perception_bringup" / "share" / "perception_bringup"
    installed = sorted(share.glob("launch/*.launch.py")) + sorted(share.glob("config/*.yaml"))
    assert [p.relative_to(share).as_posix() for p in installed] == sorted(BRINGUP_COPIES, reverse=True)
    for p in installed:
        assert p.is_file() and not p.is_symlink() and p.stat().st_size > 0, p
        assert p.read_bytes() == BRINGUP_COPIES[p.relative_to(share).as_posix()].read_bytes()
    assert (ws / "install" / "perception_bringup" / "lib" / "perception_bringup" / "occupancy_grid_node").is_file()


def test_setup_stops_with_a_clear_message_when_the_disk_is_too_full(tmp_path):
    """A full disk used to surface as a torch import error halfway through pip; setup.sh now checks first and names
    the cause, and creates nothing. The threshold is raised far above any disk so the check fires here."""
    venv = tmp_path / "venv"
    # PYTHON=/bin/false: were the check ever not to fire, the venv creation fails at once (no install, no colcon
    # build of the repo's ros_ws behind a running test suite) and the message assertion below fails instead
    env = dict(os.environ, PN_VENV=str(venv / "sub"), PN_SETUP_MIN_FREE_MB="999999999999", PYTHON="/bin/false")
    r = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MB free on the disk of" in r.stderr and "PN_SETUP_MIN_FREE_MB" in r.stderr
    assert not venv.exists()
