"""Start-up objects leave the collector's reach before the frame loop (perception_nodes/latency/gc_pause.py)."""

from __future__ import annotations

import gc

from perception_nodes.latency.gc_pause import freeze_startup_objects, gc_pause_monitor


def test_freeze_moves_start_up_objects_out_of_later_collections():
    """What exists at the freeze is no longer tracked by the collector (so a full collection does not walk
    it); what comes after still is, and a cycle made after the freeze is still collected."""
    startup = [[i] for i in range(1000)]
    assert any(o is startup for o in gc.get_objects())
    frozen = freeze_startup_objects()
    assert frozen >= 1000 and gc.get_freeze_count() == frozen
    assert not any(o is startup for o in gc.get_objects())
    later = [[i] for i in range(10)]
    assert any(o is later for o in gc.get_objects())

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    del a, b
    assert gc.collect() >= 2


def test_monitor_records_each_full_collection():
    with gc_pause_monitor() as pauses:
        gc.collect()
        gc.collect()
    assert len(pauses.ms[2]) == 2 and all(ms >= 0.0 for ms in pauses.ms[2])
    summary = pauses.summary()
    assert summary["gen2"]["count"] == 2.0 and summary["gen2"]["max_ms"] == pauses.worst(2)
    n = len(gc.callbacks)
    with gc_pause_monitor():
        assert len(gc.callbacks) == n + 1
    assert len(gc.callbacks) == n  # the callback is removed again


def test_replay_freezes_the_built_graph_before_its_first_frame(kitti_bag, tmp_path, monkeypatch):
    """run_graph freezes once, after build_graph (nodes built and warmed up) and before any output."""
    from perception_nodes import replay
    from perception_nodes.config import load_params

    events: list[str] = []
    real_build = replay.build_graph

    def build_graph(*args, **kwargs):
        nodes = real_build(*args, **kwargs)
        events.append("built")
        return nodes

    monkeypatch.setattr(replay, "build_graph", build_graph)
    monkeypatch.setattr(replay, "freeze_startup_objects", lambda: events.append("frozen") or 0)
    params = load_params()
    for name in ("lidar_detection", "fusion", "detection_fusion", "calibration_monitor", "stereo_occupancy",
                 "camera_bev", "bev_fusion", "control"):
        params[name]["enabled"] = False
    res = replay.run_graph(kitti_bag, params, tmp_path, progress=False,
                           on_output=lambda topic, msg: events.append("output"))
    assert events[:2] == ["built", "frozen"] and events.count("frozen") == 1
    assert "output" in events and res.latency["frames_out"]["occupancy_grid"] == 3
