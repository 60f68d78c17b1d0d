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
    out = tmp_path / "m.json"
    # the repo's config passes the role check (every scene in one role only); nothing is scored here
    assert main(["--real-only", "--no-kitti", "--no-nuscenes", "--threads", "1", "--metrics-out", str(out)]) == 0
    assert not set(doc.get("reserved_sets") or {}) & set(doc["sets"])
    # a reserved set disjoint from every role passes the check and is listed nowhere in the output
    kept = dict(doc)
    kept["reserved_sets"] = {"r": [{"generate": {"scenario": "highway", "seed": 9999, "duration_s": 4.0, "lidar": "vlp32"},
                                    "stride": 4}]}
    cfg = tmp_path / "kept.yaml"
    cfg.write_text(yaml.safe_dump(kept))
    assert main(["--real-only", "--no-kitti", "--no-nuscenes", "--eval-config", str(cfg), "--metrics-out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["generated"] == {} and not any("9999" in json.dumps(v) for v in m["scenes"].values())
    # a reserved scene reused by another role is refused
    clash = dict(doc)
    clash["reserved_sets"] = {"r": [doc["validation"][0]]}
    cfg = tmp_path / "clash.yaml"
    cfg.write_text(yaml.safe_dump(clash))
    with pytest.raises(ValueError, match="both"):
        main(["--real-only", "--no-kitti", "--no-nuscenes", "--eval-config", str(cfg), "--metrics-out", str(out)])


def test_box_refinement_switches_are_recorded_and_checked(tmp_path, capsys):
    """lidar-eval scores refined boxes by default (as the node publishes them), as decoded with
    --no-box-refinement, or with other settings; the metrics say which; bad settings are usage errors."""
    from perception_nodes.learning.lidar_detection_eval import main

    out = tmp_path / "m.json"
    base = ["--real-only", "--no-kitti", "--no-nuscenes", "--threads", "1", "--metrics-out", str(out)]
    assert main(base) == 0
    rec = json.loads(out.read_text())["box_refinement"]
    assert rec["enabled"] is True and rec["near_faces"] is True and rec["classes"] == ["car"]
    assert main(base + ["--no-box-refinement"]) == 0
    assert json.loads(out.read_text())["box_refinement"]["enabled"] is False
    assert main(base + ["--box-refinement-params", '{"near_faces": false, "search_deg": 20}']) == 0
    rec = json.loads(out.read_text())["box_refinement"]
    assert rec["enabled"] is True and rec["near_faces"] is False and rec["search_deg"] == 20.0
    for bad, msg in ((["--no-box-refinement", "--box-refinement-params", "{}"], "exclude each other"),
                     (["--box-refinement-params", "{near_faces: false}"], "not a JSON object"),
                     (["--box-refinement-params", '{"near_face": false}'], "unknown key"),
                     (["--box-refinement-params", '{"min_points": 1e400}'], "min_points: bad value"),
                     (["--box-refinement-params", '{"margin_m": 10}'], "margin_m must be in")):
        with pytest.raises(SystemExit) as exc:
            main(base + bad)
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
