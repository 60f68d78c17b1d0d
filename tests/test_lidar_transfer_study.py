"""benchmarks/lidar_transfer.py: the arms' configs are valid training configs on seeds no other config uses,
and ``--quick`` trains one arm and scores it on the real frames end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "lidar_transfer.py"
SHARED = REPO.parent / "shared" / "data"


def _module():
    return load_script(SCRIPT, "lidar_transfer_bench")


def test_arms_realism_and_configs(tmp_path):
    from perception_nodes.learning.branches import get_branch
    from perception_nodes.learning.config import load_config
    from perception_nodes.scenario.realism import KNOBS, Realism

    mod = _module()
    names = mod.arms()
    assert names[:2] == ["none", "all"] and len(names) == 2 + len(KNOBS)
    with pytest.raises(SystemExit):
        mod.arms("all,no-such-knob")
    for arm in names:
        for lidar in mod.LIDARS:
            real = mod.realism_of(arm, lidar)
            r = Realism.parse(real)
            on = {k for k in KNOBS if getattr(r, k)}
            if arm == "none":
                assert not on
            elif arm == "all":
                assert on == set(KNOBS)
            else:  # leave one out
                assert on == set(KNOBS) - {arm.removeprefix("no-")}
            assert r.target == ("nuscenes" if lidar == "hdl32e" else "kitti") or arm == "none"
        cfg = load_config(mod.train_config(arm, tmp_path / arm, tmp_path / "init.safetensors", n_scenes=12,
                                           duration_s=8.0, epochs=3), branch="lidar_detection")
        assert len(cfg.data.train) == 12 and cfg.branch_sections["finetune"]["freeze_backbone"]
        get_branch("lidar_detection")(dict(cfg.branch_sections))  # the branch accepts its sections
    # the arms' scene seeds are used by no config of the repo (training, validation, held-out)
    used = set()
    for f in (REPO / "configs").rglob("*.yaml"):
        used |= {int(m) for m in re.findall(r"seed: (\d+)", f.read_text())}
    assert not used & set(mod.SEEDS), sorted(used & set(mod.SEEDS))


@pytest.mark.skipif(not (SHARED / "kitti_object_vis").is_dir(), reason="needs ../shared/data (real KITTI and nuScenes frames)")
def test_quick_run_trains_and_scores_one_arm(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--arms", "none", "--scenes", "1", "--workers", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    arm = doc["arms"]["none"]
    assert arm["kitti"]["frames"] == 4 and arm["kitti"]["cars"] > 0  # 000000-000002 + 000008
    assert arm["nuscenes"]["frames"] == 1 and arm["nuscenes"]["cars"] == 4
    for real in ("kitti", "nuscenes"):
        r = arm[real]["car_recall_2m_at_0.3"]
        assert 0.0 <= r <= 1.0 and arm[real]["boxes_per_frame_at_0.3"] >= 0
    assert (tmp_path / "none" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["arms"]["none"]["kitti"] == arm["kitti"]


def test_a_trained_arm_is_reused_only_with_the_same_recipe(tmp_path, monkeypatch):
    mod = _module()
    calls = []
    monkeypatch.setattr(mod.subprocess, "run", lambda *a, **k: calls.append(a))  # records the training command
    init = tmp_path / "init.safetensors"
    kw = {"n_scenes": 2, "duration_s": 2.0, "epochs": 1}
    mod.train_arm("none", tmp_path, init, **kw)
    assert len(calls) == 1 and (tmp_path / "none" / "config.yaml").is_file()
    (tmp_path / "none" / "model.safetensors").write_bytes(b"weights")
    assert mod.train_arm("none", tmp_path, init, **kw) == 0.0 and len(calls) == 1  # same recipe: kept
    mod.train_arm("none", tmp_path, init, **{**kw, "epochs": 3})  # another recipe: trained again, old run removed
    assert len(calls) == 2 and not (tmp_path / "none" / "model.safetensors").exists()
    assert "epochs: 3" in (tmp_path / "none" / "config.yaml").read_text()
