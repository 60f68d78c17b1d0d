"""The evaluation config of the LiDAR branch: reserved report sets are checked against every other role but
never scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/train/lidar_detection_eval.yaml"


def test_reserved_sets_are_disjoint_and_not_scored(tmp_path):
    from perception_nodes.learning.lidar_detection_eval import main

    doc = yaml.safe_load(CONFIG.read_text())
    assert doc["reserved_sets"] and not set(doc["reserved_sets"]) & set(doc["sets"])
    out = tmp_path / "m.json"
    # the repo's config passes the role check with its reserved sets; nothing generated or real is scored here
    assert main(["--real-only", "--no-kitti", "--no-nuscenes", "--threads", "1", "--metrics-out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["generated"] == {} and not any("fresh4" in k for k in m["scenes"])
    # a reserved scene reused by another role is refused
    clash = dict(doc)
    clash["reserved_sets"] = {"r": [doc["validation"][0]]}
    cfg = tmp_path / "clash.yaml"
    cfg.write_text(yaml.safe_dump(clash))
    with pytest.raises(ValueError, match="both"):
        main(["--real-only", "--no-kitti", "--no-nuscenes", "--eval-config", str(cfg), "--metrics-out", str(out)])
