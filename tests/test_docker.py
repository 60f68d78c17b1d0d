"""The Dockerfile without Docker (no engine here): every COPY source exists and is in the build context,
every pip and apt install is pinned, both targets (x86, Jetson) resolve to a stage, the entrypoint exists,
is executable and sources ROS then the workspace, and .dockerignore keeps .venv and colcon output out."""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(p for p in REPO.glob("Dockerfile*") if p.is_file())


@dataclass
class Instruction:
    op: str
    args: str
    stage: int


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    stages: list[str] = field(default_factory=list)  # stage names (or "" when unnamed)
    variables: dict[str, set[str]] = field(default_factory=dict)  # ARG defaults and ENV values, every stage


def parse(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped; ARG/ENV values collected."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    assert not buf, f"{path}: file ends inside a continued line"
    df = Dockerfile([])
    stage = -1
    for line in lines:
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
            m = re.search(r"\s+AS\s+(\S+)\s*$", args, re.I)
            df.stages.append(m.group(1) if m else "")
        df.instructions.append(Instruction(op, args.strip(), stage))
        if op == "ARG" and "=" in args:
            k, v = args.split("=", 1)
            df.variables.setdefault(k.strip(), set()).add(v.strip().strip('"'))
        if op == "ENV":
            for tok in shlex.split(args):
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    df.variables.setdefault(k, set()).add(v)
    return df


def expand(text: str, variables: dict[str, set[str]]) -> list[str]:
    """Every value ``text`` can take with $VAR / ${VAR} replaced by each value the file gives VAR."""
    names = sorted(set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", text)))
    if not names:
        return [text]
    out = []
    for combo in itertools.product(*(sorted(variables.get(n, {f"<{n}?>"})) for n in names)):
        s = text
        for n, v in zip(names, combo):
            s = re.sub(r"\$\{" + n + r"\}|\$" + n + r"\b", v, s)
        out.append(s)
    return out


def commands(run: str) -> list[list[str]]:
    """Simple commands of a RUN line (split at &&, ||, ;, |), as shell words."""
    words = shlex.split(run, posix=True)
    out, cur = [], []
    for w in words:
        if w in ("&&", "||", ";", "|"):
            out.append(cur)
            cur = []
        else:
            cur.append(w.rstrip(";"))
            if w.endswith(";"):
                out.append(cur)
                cur = []
    out.append(cur)
    return [c for c in out if c]


def requirement_lines(path: Path) -> list[tuple[Path, str]]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += requirement_lines(path.parent / line.split(None, 1)[1])
        else:
            out.append((path, line))
    return out


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, enough for these patterns: a path is out when it or a parent matches."""
    parts = rel.split("/")
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and
                                                   fnmatch.fnmatchcase(parts[i - 1], pat[3:])):
                excluded = not neg
                break
    return excluded


def dockerignore() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing: the 1.6 GB .venv would enter the build context"
    return [s.strip() for s in path.read_text().splitlines() if s.strip() and not s.strip().startswith("#")]


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> tuple[Path, Dockerfile]:
    return request.param, parse(request.param)


def test_there_is_a_dockerfile():
    assert REPO / "Dockerfile" in DOCKERFILES


def test_every_copy_source_exists_and_is_in_the_context(dockerfile):
    path, df = dockerfile
    patterns = dockerignore()
    copies = [i for i in df.instructions if i.op in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        words = shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        if words[0].startswith("["):
            words = json.loads(ins.args)
        *sources, _dest = words
        for src in sources:
            if re.match(r"https?://", src):
                assert ins.op == "ADD", f"{path.name}: COPY cannot fetch {src}"
                continue
            for value in expand(src, df.variables):
                hits = list(REPO.glob(value)) if any(c in value for c in "*?[") else [REPO / value]
                assert hits and all(h.exists() for h in hits), f"{path.name}: {ins.op} source {value!r} does not exist"
                for h in hits:
                    rel = h.relative_to(REPO).as_posix()
                    assert rel == "." or not ignored(rel, patterns), f"{path.name}: {rel} is excluded by .dockerignore"


def _check_pip(words: list[str], df: Dockerfile, where: str) -> int:
    """Asserts one ``pip install`` is pinned; returns how many requirements it named."""
    i = words.index("install") + 1
    no_deps = "--no-deps" in words
    named = 0
    while i < len(words):
        w = words[i]
        if w in ("-r", "--requirement", "-c", "--constraint"):
            for value in expand(words[i + 1], df.variables):
                req = REPO / value
                assert req.is_file(), f"{where}: requirements file {value} does not exist"
                for src, line in requirement_lines(req):
                    assert re.match(r"^[A-Za-z0-9._\[\],-]+==[A-Za-z0-9.+!*-]+(\s*;.*)?$", line), \
                        f"{where}: {src.relative_to(REPO)}: {line!r} is not pinned with =="
                    named += 1
            i += 2
            continue
        if w in ("-e", "--editable"):
            assert words[i + 1] == "." and no_deps, f"{where}: an editable install must be the project with --no-deps"
            named += 1
            i += 2
            continue
        if w.startswith("-"):
            i += 1
            continue
        if w == ".":
            assert no_deps, f"{where}: installing the project needs --no-deps (its deps are the pins)"
        else:
            assert re.match(r"^[A-Za-z0-9._\[\],-]+==[A-Za-z0-9.+!*-]+$", w), f"{where}: {w!r} is not pinned"
        named += 1
        i += 1
    return named


def _check_apt(words: list[str], df: Dockerfile, where: str) -> int:
    named = 0
    for w in words[words.index("install") + 1:]:
        if w.startswith("-"):
            continue
        for value in expand(w, df.variables):
            assert re.match(r"^[a-z0-9][a-z0-9.+-]*=[A-Za-z0-9.+~:*-]+$", value), \
                f"{where}: apt package {value!r} is not pinned (name=version)"
            named += 1
    return named


def test_every_installed_requirement_is_pinned(dockerfile):
    path, df = dockerfile
    pip_named = apt_named = 0
    for ins in (i for i in df.instructions if i.op == "RUN"):
        for words in commands(ins.args):
            where = f"{path.name} (stage {df.stages[ins.stage] or ins.stage}): {' '.join(words)[:80]}"
            if "install" not in words:
                continue
            if any(w.endswith("pip") or w.endswith("pip3") for w in words) or words[:3] == ["python3", "-m", "pip"]:
                pip_named += _check_pip(words, df, where)
            elif words[0] in ("apt-get", "apt"):
                apt_named += _check_apt(words, df, where)
    assert pip_named >= 8 and apt_named >= 2  # the checks saw the installs (parsing did not miss them)


def test_both_targets_resolve_to_a_stage(dockerfile):
    path, df = dockerfile
    targets = df.variables.get("TARGET", set())
    assert targets == {"x86"}, "TARGET build argument (default x86) selects the base"
    final = [i for i in df.instructions if i.op == "FROM"][-1].args.split()[0]
    for target in ("x86", "jetson"):
        base = final.replace("${TARGET}", target)
        assert base in df.stages, f"{path.name}: --build-arg TARGET={target} needs a stage named {base}"
    froms = {df.stages[i.stage]: i.args.split()[0] for i in df.instructions if i.op == "FROM"}
    assert "l4t-jetpack" in froms["base-jetson"] and ":" in froms["base-jetson"]
    for image in froms.values():
        assert image.startswith("base-") or (":" in image and not image.endswith(":latest")), \
            f"{path.name}: base image {image} needs an explicit tag"


def test_entrypoint_exists_is_executable_and_used(dockerfile):
    path, df = dockerfile
    ep = [i for i in df.instructions if i.op == "ENTRYPOINT"]
    assert len(ep) == 1
    target = json.loads(ep[0].args)[0]
    workdir = [i.args for i in df.instructions if i.op == "WORKDIR"][-1].rstrip("/")
    assert target.startswith(workdir + "/"), f"{target} is not under WORKDIR {workdir}"
    rel = target[len(workdir) + 1:]
    local = REPO / rel
    assert local.is_file() and os.access(local, os.X_OK), f"{rel} missing or not executable"
    mode = subprocess.run(["git", "ls-files", "-s", rel], cwd=REPO, capture_output=True, text=True).stdout.split()
    if mode:  # committed: the mode git stores is what a fresh clone (and so the build context) gets
        assert mode[0] == "100755", f"{rel} is committed without its executable bit"
    copied = [shlex.split(i.args)[0] for i in df.instructions if i.op == "COPY"]
    assert any(rel == c or rel.startswith(c.rstrip("/") + "/") for c in copied), f"{rel} is not copied into the image"


def test_entrypoint_sources_ros_then_the_workspace_and_runs_the_command(tmp_path):
    """Run with stand-in setup files: both sourced in order, the command exec'd with its status, Humble mapped."""
    ros, ws = tmp_path / "ros_setup.bash", tmp_path / "ws_setup.bash"
    ros.write_text('export PN_ORDER="ros"\n')
    ws.write_text('export PN_ORDER="$PN_ORDER,ws"\n')
    env = {"PATH": os.environ["PATH"], "PN_ROS_SETUP": str(ros), "PN_WS_SETUP": str(ws), "ROS_DISTRO": "kilted"}
    ep = str(REPO / "docker" / "entrypoint.sh")
    r = subprocess.run([ep, "bash", "-c", 'echo "$PN_ORDER $ROS_AUTOMATIC_DISCOVERY_RANGE ${ROS_LOCALHOST_ONLY:-unset}"; exit 3'],
                       env=env, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (3, "ros,ws LOCALHOST unset")
    r = subprocess.run([ep, "bash", "-c", 'echo "$ROS_LOCALHOST_ONLY"'], env={**env, "ROS_DISTRO": "humble"},
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "1"
    r = subprocess.run([ep, "bash", "-c", 'echo "$ROS_AUTOMATIC_DISCOVERY_RANGE"'],
                       env={**env, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, capture_output=True, text=True)
    assert r.stdout.strip() == "SUBNET"
    r = subprocess.run([ep, "true"], env={**env, "PN_WS_SETUP": str(tmp_path / "missing.bash")},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "missing.bash not found" in r.stderr


def test_dockerignore_keeps_the_venv_and_build_output_out():
    patterns = dockerignore()
    for rel in (".venv", ".venv/lib/python3.11/site-packages/torch/lib/libtorch.so", "out/demo/outputs.mcap",
                "ros_ws/build/tf2_msgs", "ros_ws/install/setup.bash", "ros_ws/log/latest", ".git/HEAD",
                "perception_nodes/__pycache__/cli.cpython-311.pyc"):
        assert ignored(rel, patterns), f"{rel} would enter the build context"
    for rel in ("perception_nodes/cli.py", "ros_ws/src/tf2_msgs/msg/TFMessage.msg", "docker/entrypoint.sh",
                "requirements/core.txt", "README.md", "pyproject.toml"):
        assert not ignored(rel, patterns), f"{rel} is needed in the build context"
