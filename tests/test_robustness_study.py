"""benchmarks/robustness.py end to end: ``--quick`` on tiny generated bags gives a valid JSON and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "robustness.py"


def _strict(text: str) -> dict:
    def no_constants(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _module():
    return load_script(SCRIPT, "robustness_bench")


def test_training_seed_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        _module().main(["--quick", "--scenario", "urban_street:1:clean", "--out", "/nonexistent/never-written"])
    assert exc.value.code == 2
    assert "configs/train" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    out = tmp_path / "rb"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "robustness.json")
    doc = _strict((out / "robustness.json").read_text())
    for f in ("report.html", "occupancy.png", "timelines.png", "auroc.png"):
        assert (out / f).stat().st_size > 0, f
    # a smoke run says so wherever its goal verdicts appear, and has its own default folder
    smoke = "smoke run: 1.2 s bags, not evidence for the goals"
    assert doc["config"]["smoke"] == smoke and smoke in proc.stdout and smoke in proc.stderr
    assert all(line.startswith("smoke: ") for line in proc.stderr.splitlines() if line.endswith(tuple(
        g["goal"] for g in doc["goals"])))
    assert f"Goals ({smoke})" in (out / "report.html").read_text()
    mod = _module()
    assert mod.default_out(True) == Path("out/robustness-quick") != mod.default_out(False)

    clean, blackout = doc["runs"]
    assert (clean["condition"], blackout["condition"]) == ("clean", "lidar_blackout")
    # the fault window comes from the bag's /scenario/info, as the generator applied it
    assert blackout["faults_in_bag"]["lidar_sector_time"] == [0.4, 0.8]
    assert blackout["window_s"] == [0.4, 0.8] and blackout["sensor"] == "lidar"
    assert blackout["frames_in_window"] == 4 and clean["window_s"] is None

    fused = blackout["occupancy"]["fusion"]
    # every source on the same cells
    cells = {s: v["all"]["cells"] for s, v in blackout["occupancy"].items()}
    assert len(set(cells.values())) == 1 and fused["all"]["cells"] > 0, cells
    # the whole spin is lost: the affected cells are (all but a sliver of) the window's visible cells
    assert 0.99 * fused["window"]["cells"] <= fused["affected"]["cells"] <= fused["window"]["cells"]
    assert "affected" not in clean["occupancy"]["fusion"] or clean["occupancy"]["fusion"]["affected"] is None
    assert fused["all"]["all_free_brier"] > 0 and fused["all"]["base_rate_brier"] > 0

    assert "auroc" not in clean
    a = blackout["auroc"]
    assert a["positive_frames"] == 4 and a["negative_frames"] == clean["frames"] - doc["config"]["warmup_frames"]
    assert "fusion_vacuity" in a["frames"] and "fusion_vacuity" in a["cells"]
    assert all(v is None or 0.0 <= v <= 1.0 for part in ("frames", "cells") for v in a[part].values())

    assert isinstance(blackout["detection"]["lidar"], dict)
    assert blackout["detection"]["lidar"]["window"]["frames"] == 4
    for run in doc["runs"]:  # topics of nodes this branch does not have are reported, not invented
        if not run["present"]["control_uncertainty"]:
            assert run["fallback"] == "not present" and run["curvature"]["control"] == "not present"
        if not run["present"]["fusion_objects"]:
            assert run["detection"]["fusion"] == "not present"
    assert set(blackout["weights"]) == set(blackout["present"]["fusion_weights"])
    goals = {g["goal"]: g for g in doc["goals"]}
    assert len(goals) == 6 and all(g["met"] in (True, False, None) for g in goals.values())


def _run(condition: str, sensor: str, fused: float, best: float, fallback: object, aurocs: dict | None = None) -> dict:
    occ = lambda b: {"all": {"brier": b, "ece": 0.02, "iou": 0.8}, "affected": None}  # noqa: E731
    return {"scenario": "s", "seed": 1, "condition": condition, "sensor": sensor,
            "occupancy": {"fusion": occ(fused), "geometric": occ(best), "lidar_learned": occ(best + 0.01)},
            "auroc": aurocs, "fallback": fallback,
            "latency": {"within_p50": True, "fusion_pipeline_p50_ms": 50.0, "limit_ms": 490.0}}


def test_goals_judge_fallback_and_brier_from_the_runs():
    goals = _module().goals
    runs = [_run("clean", "", 0.01, 0.02, {"fallback_frames": 0, "frames": 45}),
            _run("lidar_blackout", "lidar", 0.03, 0.02, {"frames_until_fallback": 2},
                 {"frames": {"fusion_vacuity": 0.95}, "cells": {"fusion_vacuity": 0.91}})]
    g = {x["goal"].split(" (")[0]: x for x in goals(runs)}
    fb = g["fallback on every LiDAR-failure episode within 3 frames, none in clean runs"]
    assert fb["met"] is True and fb["numbers"]["frames_until_fallback"] == {"s:1/lidar_blackout": 2}
    assert g["fused Brier below every single branch"]["met"] is False  # 0.03 vs 0.02 in the fault run
    assert g["uncertainty AUROC >= 0.9 for fault-affected vs clean"]["met"] is True
    # one fallback too late, one false alarm: not met
    runs[1]["fallback"] = {"frames_until_fallback": 4}
    assert {x["goal"]: x for x in goals(runs)}[fb["goal"]]["met"] is False
    runs[1]["fallback"], runs[0]["fallback"] = {"frames_until_fallback": 1}, {"fallback_frames": 1, "frames": 45}
    assert {x["goal"]: x for x in goals(runs)}[fb["goal"]]["met"] is False
    # without a control node the goal is not measured rather than met
    for r in runs:
        r["fallback"] = "not present"
    assert {x["goal"]: x for x in goals(runs)}[fb["goal"]]["met"] is None
