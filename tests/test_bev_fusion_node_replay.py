"""The bev_fusion node in the default replay graph: every scan of the generated scenario gives a fused frame
(mode 3 on ``/bev_fusion/debug/mode``), its boxes reach the detection fusion node as a second branch when
that branch is switched on (every message used), and report.html's section shows its boxes beside the LiDAR branch's with its mode over time."""

from __future__ import annotations

import pytest

from perception_nodes.config import load_params


@pytest.mark.slow
def test_default_graph_replay_runs_the_fuser_feeds_detection_fusion_and_reports_it(scenario_bag, tmp_path):
    from perception_nodes.replay import run_graph
    from perception_nodes.report import bev_fusion_section

    full = load_params()
    assert full["bev_fusion"]["enabled"]  # in the default graph; as a detection_fusion branch only on request
    full["detection_fusion"]["branches"]["bev_fusion"]["enabled"] = True
    keep = ("lidar_detection", "bev_fusion", "detection_fusion", "replay")  # the detection path of the default graph
    params = {k: v for k, v in full.items() if k in keep}
    params["lidar_detection"]["geometric_occupancy_topic"] = ""  # no occupancy node in this cut
    params["detection_fusion"]["branches"]["lidar"]["weight_topic"] = ""  # no occupancy fusion node either
    res = run_graph(scenario_bag, params, tmp_path, progress=False)
    frames = res.input_frames
    assert frames == 10
    assert [m for _, m in res.bev_fusion_modes] == [3] * frames
    assert res.latency["frames_out"]["bev_fusion"] == frames
    acct = res.latency["inputs"]["detection_fusion"]
    assert acct["/perception/bev_fusion/detections"]["used"] == frames, acct
    assert all(a["balanced"] for n in res.latency["inputs"].values() for a in n.values())
    stamp, det = res.bev_fusion_detections[-1]
    assert len(det.detections) > 0
    html = bev_fusion_section(res)  # the report's section (write_report puts it after the detection section)
    assert "Camera + LiDAR fuser" in html and "Frames: fused 10" in html
    assert (tmp_path / "bev_fusion.png").stat().st_size > 10_000
